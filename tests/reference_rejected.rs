//! A reference to a row whose document is not in the target — rejected when its entity ran, in
//! this run or an earlier one — would point nowhere. The referencing row is rejected (rule
//! `reference_rejected`) when its field has the `exists` rule, written with a warning otherwise;
//! `check` counts both beforehand; `verify` then agrees with the run. Shapes: a top-level field and
//! a field of an embedded document, integer and text keys, MongoDB (the referenced entity run by an
//! earlier command) and Appwrite (one run). Oracle: the target's own documents and rows, the rejects
//! and warnings files.

mod common;

use common::World;
use common::standin::Aw;
use serde_json::Value;

/// `products` row 2 (and `p2` in the text-keyed variant) holds a date no target can hold
/// (`infinity`): rejected (`date_out_of_range`). Orders 20 and 30 reference it (`exists`), order 40
/// holds a line referencing it (embedded, `exists`), note 7 references it (no `exists`), and
/// note 6 holds an embedded reference to it (no `exists`).
fn schema(key_type: &str, one: &str, two: &str) -> String {
    format!(
        "CREATE TABLE products (id {key_type} PRIMARY KEY, released date);
         INSERT INTO products VALUES ('{one}', '2020-01-01'), ('{two}', 'infinity');
         CREATE TABLE orders (id int PRIMARY KEY, product_id {key_type} REFERENCES products (id));
         INSERT INTO orders VALUES (10, '{one}'), (20, '{two}'), (30, '{two}'), (40, '{one}');
         CREATE TABLE order_lines (order_id int REFERENCES orders (id), n int, product_id {key_type},
           PRIMARY KEY (order_id, n));
         INSERT INTO order_lines VALUES (10, 1, '{one}'), (40, 1, '{one}'), (40, 2, '{two}');
         CREATE TABLE notes (id int PRIMARY KEY, product_id {key_type});
         INSERT INTO notes VALUES (6, '{one}'), (7, '{two}');
         CREATE TABLE note_refs (note_id int REFERENCES notes (id), n int, product_id {key_type},
           PRIMARY KEY (note_id, n));
         INSERT INTO note_refs VALUES (6, 1, '{one}'), (6, 2, '{two}');"
    )
}

const PRODUCTS: &str = "version = 1\nname = \"products\"\n[source]\ntable = \"products\"\nkey = [\"id\"]\n\
[[field]]\npath = \"released\"\ncolumn = \"released\"\n";

const ORDERS: &str = "version = 1\nname = \"orders\"\n[source]\ntable = \"orders\"\nkey = [\"id\"]\n\
[[field]]\npath = \"productId\"\ncolumn = \"product_id\"\nreference = \"products\"\n\
validate = { exists = true }\n\
[[embed]]\npath = \"lines\"\ntable = \"order_lines\"\nforeign_key = \"order_id\"\norder_by = [\"n\"]\n\
[[embed.field]]\npath = \"n\"\ncolumn = \"n\"\n\
[[embed.field]]\npath = \"productId\"\ncolumn = \"product_id\"\nreference = \"products\"\n\
validate = { exists = true }\n";

const NOTES: &str = "version = 1\nname = \"notes\"\n[source]\ntable = \"notes\"\nkey = [\"id\"]\n\
[[field]]\npath = \"productId\"\ncolumn = \"product_id\"\nreference = \"products\"\n\
[[embed]]\npath = \"refs\"\ntable = \"note_refs\"\nforeign_key = \"note_id\"\norder_by = [\"n\"]\n\
[[embed.field]]\npath = \"productId\"\ncolumn = \"product_id\"\nreference = \"products\"\n";

fn files(w: &World) -> std::path::PathBuf {
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/products.toml"), PRODUCTS).unwrap();
    std::fs::write(dir.join("mappings/orders.toml"), ORDERS).unwrap();
    std::fs::write(dir.join("mappings/notes.toml"), NOTES).unwrap();
    let pipeline = dir.join("pipeline.toml");
    std::fs::write(
        &pipeline,
        "version = 1\nname = \"shop\"\nmappings_dir = \"mappings\"\n\
         [[stage]]\nname = \"products\"\nentities = [\"products\"]\n\
         [[stage]]\nname = \"orders\"\nentities = [\"orders\", \"notes\"]\ndepends_on = [\"products\"]\n",
    )
    .unwrap();
    pipeline
}

fn text(o: &std::process::Output) -> String {
    common::output_text(o)
}

/// check's findings as (entity, path, rule, severity, rows), sorted.
fn findings(out: &std::process::Output) -> Vec<(String, String, String, String, u64)> {
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)));
    let mut v: Vec<_> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["entity"].as_str().unwrap().to_string(),
                f["path"].as_str().unwrap_or_default().to_string(),
                f["rule"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
                f["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn expected_findings() -> Vec<(String, String, String, String, u64)> {
    let f =
        |e: &str, p: &str, r: &str, s: &str, n: u64| (e.into(), p.into(), r.into(), s.into(), n);
    vec![
        f("notes", "productId", "reference_rejected", "warning", 1),
        f(
            "notes",
            "refs[].productId",
            "reference_rejected",
            "warning",
            1,
        ),
        f(
            "orders",
            "lines[].productId",
            "reference_rejected",
            "reject",
            1,
        ),
        f("orders", "productId", "reference_rejected", "reject", 2),
        f("products", "released", "date_out_of_range", "reject", 1),
    ]
}

/// (entity, written, rejected, warnings) of a run report, sorted.
fn counts(report: &Value) -> Vec<(String, u64, u64, u64)> {
    let mut v: Vec<_> = report["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let n = |k: &str| e[k].as_u64().unwrap();
            assert_eq!(
                n("read"),
                n("written") + n("rejected") + n("skipped"),
                "{e}"
            );
            (
                e["name"].as_str().unwrap().to_string(),
                n("written"),
                n("rejected"),
                n("warnings"),
            )
        })
        .collect();
    v.sort();
    v
}

/// What the whole pipeline's run does (and its dry run predicts).
fn rehearsed() -> Vec<(String, u64, u64, u64)> {
    [
        ("notes", 2, 0, 2),
        ("orders", 1, 3, 0),
        ("products", 1, 1, 0),
    ]
    .map(|(e, w, r, n)| (e.to_string(), w, r, n))
    .to_vec()
}

/// (entity, key, rule) of the rejects (or warnings) of a run, sorted.
fn lines(rows: Vec<(String, String, String, String)>) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = rows.into_iter().map(|(e, k, _, r)| (e, k, r)).collect();
    v.sort();
    v
}

#[tokio::test]
async fn references_to_rows_rejected_by_an_earlier_run_are_rejected_or_warned_on_mongodb() {
    let w = World::new("ref_rejected").await;
    w.sql(&schema("int", "1", "2")).await;
    let pipeline = files(&w);

    let out = w
        .cutover()
        .args(["check", "--json", "--full", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(findings(&out), expected_findings(), "{}", text(&out));

    // The rehearsal predicts the run: its orders stage knows the products it rejected.
    let out = w.migrate_with(&pipeline, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(counts(&w.latest_report()), rehearsed());
    assert_eq!(w.count("orders").await, 0);

    // The referenced entity alone first: the next command learns its rejects from the target.
    let out = w.migrate_with(&pipeline, &["products"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // check of the referencing entities alone asks the target too, and predicts the run.
    let out = w
        .cutover()
        .args(["check", "--json", "--full", "--pipeline"])
        .arg(&pipeline)
        .args(["orders", "notes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let mut alone = expected_findings();
    alone.retain(|f| f.0 != "products");
    assert_eq!(findings(&out), alone, "{}", text(&out));
    let out = w.migrate_with(&pipeline, &["orders", "notes"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report = w.latest_report();
    let run_id = report["run_id"].as_str().unwrap();
    let s = |e: &str, k: &str, r: &str| (e.to_string(), k.to_string(), r.to_string());
    assert_eq!(
        lines(w.rejects(run_id)),
        [
            s("orders", "20", "reference_rejected"),
            s("orders", "30", "reference_rejected"),
            s("orders", "40", "reference_rejected"),
        ],
        "{report}"
    );
    assert_eq!(
        lines(w.warnings(run_id)),
        [
            s("notes", "6", "reference_rejected"),
            s("notes", "7", "reference_rejected")
        ]
    );
    let ids = |docs: Vec<bson::Document>| -> Vec<i32> {
        docs.iter().map(|d| d.get_i32("_id").unwrap()).collect()
    };
    assert_eq!(ids(w.docs("products").await), [1]);
    assert_eq!(ids(w.docs("orders").await), [10]);
    assert_eq!(ids(w.docs("notes").await), [6, 7]);
    for e in report["entities"].as_array().unwrap() {
        let n = |k: &str| e[k].as_u64().unwrap();
        assert_eq!(
            n("read"),
            n("written") + n("rejected") + n("skipped"),
            "{e}"
        );
    }

    // verify agrees with the run on the rejected references; the warned one points nowhere.
    let out = w
        .cutover()
        .args(["verify", "products", "orders", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = w
        .cutover()
        .args(["verify", "notes", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    // The run wrote note 7 with a warning (the mapping asked for that): verify names it as
    // such and does not fail on it (the seventeenth tester's finding 7).
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("references written with a warning: productId → products: 1 value(s)"),
        "{}",
        text(&out)
    );
    // Inside an embedded document too.
    assert!(
        text(&out)
            .contains("references written with a warning: refs.productId → products: 1 value(s)"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("point nowhere"), "{}", text(&out));
    // A dangle the run did not write is still a failure: product 1's document deleted since
    // (in the source, absent from the target, but not left out by the run).
    w.mongo()
        .await
        .collection::<bson::Document>("products")
        .delete_one(bson::doc! { "_id": 1 })
        .await
        .unwrap();
    let out = w
        .cutover()
        .args(["verify", "notes", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out)
            .contains("broken references: productId → products: 1 value(s) point nowhere (e.g. 1)")
            && text(&out).contains("references written with a warning: productId → products"),
        "{}",
        text(&out)
    );
    // A plain check (the referenced entity scanned too) asks the target like the run that
    // would skip products: product 1's document is gone, so orders 10 and 40 are rejected too
    // (the eighteenth tester's F2). The rehearsal of the referencing entities agrees.
    let out = w
        .cutover()
        .args(["check", "--json", "--full", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let rejected = |name: &str| {
        report["entities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["entity"] == name)
            .unwrap()["rejected_rows"]
            .as_u64()
            .unwrap()
    };
    let out = w.migrate_with(&pipeline, &["--dry-run", "--rerun", "orders", "notes"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let rehearsal = counts(&w.latest_report());
    assert_eq!(
        rehearsal[1],
        ("orders".to_string(), 0, 4, 0),
        "{rehearsal:?}"
    );
    assert_eq!(rejected("orders"), 4, "{report}");
    // products runs again after notes, rejecting the same rows (its document 1 put back
    // first): what notes' run warned of is still excused (adv35 F2: verify failed on it).
    let out = w.migrate_with(&pipeline, &["products", "--rerun"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = w
        .cutover()
        .args(["verify", "notes", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("references written with a warning: productId → products: 1 value(s)")
            && !text(&out).contains("point nowhere"),
        "{}",
        text(&out)
    );
    // products runs again and leaves product 1 out too (rejected now): notes' run could not
    // know of that one, so it is not excused (the eighteenth tester's F1); the one it warned of
    // still is.
    w.sql("UPDATE products SET released = 'infinity' WHERE id = 1")
        .await;
    let out = w.migrate_with(&pipeline, &["products", "--rerun"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = w
        .cutover()
        .args(["verify", "notes", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out)
            .contains("broken references: productId → products: 1 value(s) point nowhere (e.g. 1)")
            && text(&out)
                .contains("references written with a warning: productId → products: 1 value(s)"),
        "{}",
        text(&out)
    );
    w.drop().await;
}

#[tokio::test]
async fn references_to_rows_rejected_in_the_same_run_are_rejected_or_warned_on_appwrite() {
    let w = World::new("ref_rejected_aw").await;
    w.sql(&schema("text", "p1", "p2")).await;
    let pipeline = files(&w);
    let pipeline = pipeline.display().to_string();
    let aw = Aw::start("ref-key").await;

    let out = aw
        .cutover_in(
            &w,
            "shop",
            &[
                "check",
                "--json",
                "--full",
                "--target",
                "appwrite",
                "--pipeline",
                &pipeline,
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(findings(&out), expected_findings(), "{}", text(&out));

    let migrate = [
        "migrate",
        "--quiet",
        "--target",
        "appwrite",
        "--pipeline",
        &pipeline,
    ];
    let out = aw
        .cutover_in(&w, "shop", &[&migrate[..], &["--dry-run"]].concat())
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(counts(&w.latest_report()), rehearsed());
    assert!(aw.s.rows("shop", "orders").is_empty());

    let out = aw.cutover_in(&w, "shop", &migrate).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report = w.latest_report();
    assert_eq!(counts(&report), rehearsed());
    let run_id = report["run_id"].as_str().unwrap();
    let s = |e: &str, k: &str, r: &str| (e.to_string(), k.to_string(), r.to_string());
    assert_eq!(
        lines(w.rejects(run_id)),
        [
            s("orders", "20", "reference_rejected"),
            s("orders", "30", "reference_rejected"),
            s("orders", "40", "reference_rejected"),
            s("products", "p2", "date_out_of_range"),
        ],
        "{report}"
    );
    assert_eq!(
        lines(w.warnings(run_id)),
        [
            s("notes", "6", "reference_rejected"),
            s("notes", "7", "reference_rejected")
        ]
    );
    let ids = |table: &str| -> Vec<String> {
        let mut v: Vec<String> =
            aw.s.rows("shop", table)
                .iter()
                .map(|r| r["$id"].as_str().unwrap().to_string())
                .collect();
        v.sort();
        v
    };
    assert_eq!(ids("products"), ["p1"]);
    assert_eq!(ids("orders"), ["10"]);
    assert_eq!(ids("notes"), ["6", "7"]);
    // check of the referencing entities alone asks the target which products it holds.
    let out = aw
        .cutover_in(
            &w,
            "shop",
            &[
                "check",
                "--json",
                "--full",
                "--target",
                "appwrite",
                "--pipeline",
                &pipeline,
                "orders",
                "notes",
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let mut alone = expected_findings();
    alone.retain(|f| f.0 != "products");
    assert_eq!(findings(&out), alone, "{}", text(&out));
    let out = aw
        .cutover_in(
            &w,
            "shop",
            &[
                "verify",
                "products",
                "orders",
                "--target",
                "appwrite",
                "--pipeline",
                &pipeline,
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Note 7 was written with a warning: named, not a failure.
    let out = aw
        .cutover_in(
            &w,
            "shop",
            &[
                "verify",
                "notes",
                "--target",
                "appwrite",
                "--pipeline",
                &pipeline,
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("references written with a warning: productId → products: 1 value(s)"),
        "{}",
        text(&out)
    );
    // Inside an embedded document too.
    assert!(
        text(&out)
            .contains("references written with a warning: refs.productId → products: 1 value(s)"),
        "{}",
        text(&out)
    );
    w.drop().await;
}

/// adv36 F1: an entity that references itself (an employee's `reportsTo`): its own stage judges
/// those references by the rows it rejects (a pass of its own), and the stages after it by what
/// that stage left — employee 5 rejected by a re-run (its document removed) makes employee 9
/// and the customers naming it `reference_rejected`, and once fixed and written again, no row
/// is warned. The rehearsal and `check --rerun` predict the customers'. Both targets; int, text
/// (hashed Appwrite ids) and uuid keys. The keys are mapped as fields too (a hashed Appwrite
/// id keeps no key: `appwrite_id` warnings otherwise).
/// The staff schema with keys of `key_type`, employees `e1`, `e5`, `e9` and customers `c2`,
/// `c6`, `c7` written as `key` makes them.
fn staff(key_type: &str, key: impl Fn(&str) -> String) -> String {
    let (e1, e5, e9) = (key("1"), key("5"), key("9"));
    let (c2, c6, c7) = (key("2"), key("6"), key("7"));
    format!(
        "CREATE TABLE employees (id {key_type} PRIMARY KEY, reports_to {key_type} REFERENCES employees (id), title text);
INSERT INTO employees VALUES ({e1}, NULL, 'Boss'), ({e5}, {e1}, 'Agent'), ({e9}, {e5}, 'Clerk');
CREATE TABLE customers (id {key_type} PRIMARY KEY, rep {key_type} REFERENCES employees (id));
INSERT INTO customers VALUES ({c2}, {e5}), ({c6}, {e5}), ({c7}, {e1});"
    )
}

/// Key shapes of the self-reference test: (name, SQL type, key of a number as SQL, as the
/// reports show it).
type KeyShape = (
    &'static str,
    &'static str,
    fn(&str) -> String,
    fn(&str) -> String,
);
const INT_KEYS: KeyShape = ("int", "int", |n| n.to_string(), |n| n.to_string());
/// Text keys an Appwrite id cannot be as they are (a space, capitals): hashed ids there.
const TEXT_KEYS: KeyShape = (
    "text",
    "text",
    |n| format!("'Staff No {n}'"),
    |n| format!("Staff No {n}"),
);
const UUID_KEYS: KeyShape = (
    "uuid",
    "uuid",
    |n| format!("'00000000-0000-4000-8000-00000000000{n}'"),
    |n| format!("00000000-0000-4000-8000-00000000000{n}"),
);

fn staff_files(w: &World) -> std::path::PathBuf {
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(
        dir.join("mappings/employees.toml"),
        "version = 1\nname = \"employees\"\n[source]\ntable = \"employees\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"staffNo\"\ncolumn = \"id\"\n\
         [[field]]\npath = \"reportsTo\"\ncolumn = \"reports_to\"\nreference = \"employees\"\n\
         [[field]]\npath = \"title\"\ncolumn = \"title\"\nvalidate = { max_length = 10 }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("mappings/customers.toml"),
        "version = 1\nname = \"customers\"\n[source]\ntable = \"customers\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"number\"\ncolumn = \"id\"\n\
         [[field]]\npath = \"repId\"\ncolumn = \"rep\"\nreference = \"employees\"\n",
    )
    .unwrap();
    let pipeline = dir.join("staff.toml");
    std::fs::write(
        &pipeline,
        "version = 1\nname = \"staff\"\nmappings_dir = \"mappings\"\n\
         [[stage]]\nname = \"staff\"\nentities = [\"employees\"]\n\
         [[stage]]\nname = \"sales\"\nentities = [\"customers\"]\ndepends_on = [\"staff\"]\n",
    )
    .unwrap();
    pipeline
}

async fn self_reference_rerun(appwrite: bool, keys: KeyShape) {
    let (shape, key_type, sql_key, shown) = keys;
    let name = format!("ref_self_{shape}{}", if appwrite { "_aw" } else { "" });
    let w = World::new(&name).await;
    w.sql(&staff(key_type, sql_key)).await;
    let pipeline = staff_files(&w).display().to_string();
    let aw = Aw::start("ref-self").await;
    let target = if appwrite { "appwrite" } else { "mongodb" };
    let run = |args: Vec<&str>| {
        let mut all = args;
        all.extend(["--target", target, "--pipeline", pipeline.as_str()]);
        let all: Vec<String> = all.into_iter().map(String::from).collect();
        let (w, aw) = (&w, &aw);
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            aw.cutover_in(w, "staff", &refs).await
        }
    };
    let warned = |w: &World| {
        let report = w.latest_report();
        let run_id = report["run_id"].as_str().unwrap().to_string();
        (counts(&report), lines(w.warnings(&run_id)))
    };
    let s = |e: &str, k: &str| (e.to_string(), shown(k), "reference_rejected".to_string());
    let c = |e: &str, wr: u64, r: u64, n: u64| (e.to_string(), wr, r, n);
    // check --rerun's reference_rejected findings of customers, in rows.
    let predicted = |out: std::process::Output| -> u64 {
        findings(&out)
            .iter()
            .filter(|f| f.0 == "customers" && f.2 == "reference_rejected")
            .map(|f| f.4)
            .sum()
    };

    let out = run(vec!["migrate", "--quiet"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        warned(&w),
        (
            vec![c("customers", 3, 0, 0), c("employees", 3, 0, 0)],
            vec![]
        )
    );

    // Employee 5 breaks its rule now: a re-run rejects it and removes its document.
    w.sql(&format!(
        "UPDATE employees SET title = 'Sales Support Agent' WHERE id = {}",
        sql_key("5")
    ))
    .await;
    let out = run(vec!["check", "--json", "--rerun"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(predicted(out), 2);
    // The rehearsal predicts the run.
    let out = run(vec!["migrate", "--quiet", "--rerun", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(
        warned(&w).0,
        vec![c("customers", 3, 0, 2), c("employees", 2, 1, 1)]
    );
    let out = run(vec!["migrate", "--quiet", "--rerun"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // Employee 9 names 5 too, in the stage that rejects 5.
    assert_eq!(
        warned(&w),
        (
            vec![c("customers", 3, 0, 2), c("employees", 2, 1, 1)],
            vec![
                s("customers", "2"),
                s("customers", "6"),
                s("employees", "9")
            ]
        )
    );

    // Fixed again: written by the next re-run, and no row is warned.
    w.sql(&format!(
        "UPDATE employees SET title = 'Agent' WHERE id = {}",
        sql_key("5")
    ))
    .await;
    let out = run(vec!["check", "--json", "--rerun"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(predicted(out), 0);
    let out = run(vec!["migrate", "--quiet", "--rerun"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        warned(&w),
        (
            vec![c("customers", 3, 0, 0), c("employees", 3, 0, 0)],
            vec![]
        ),
        "no warning: employee 5 is written by the stage that writes employee 9"
    );
    let out = run(vec!["verify"]).await;
    assert!(out.status.success(), "{}", text(&out));
    w.drop().await;
}

#[tokio::test]
async fn a_self_referencing_entity_rerun_is_judged_by_the_stages_after_it_on_mongodb() {
    self_reference_rerun(false, INT_KEYS).await;
}

#[tokio::test]
async fn a_self_referencing_entity_rerun_is_judged_by_the_stages_after_it_on_appwrite() {
    self_reference_rerun(true, INT_KEYS).await;
}

#[tokio::test]
async fn a_self_referencing_entity_with_text_keys_on_mongodb() {
    self_reference_rerun(false, TEXT_KEYS).await;
}

#[tokio::test]
async fn a_self_referencing_entity_with_text_keys_on_appwrite() {
    self_reference_rerun(true, TEXT_KEYS).await;
}

#[tokio::test]
async fn a_self_referencing_entity_with_uuid_keys_on_mongodb() {
    self_reference_rerun(false, UUID_KEYS).await;
}

#[tokio::test]
async fn a_self_referencing_entity_with_uuid_keys_on_appwrite() {
    self_reference_rerun(true, UUID_KEYS).await;
}

/// A self-reference with `exists`: a row rejected by its reference to a row the same stage
/// rejects is itself absent, so the rows naming it are rejected too, down the chain, whatever
/// the key order (the last session's note: the stage's own pass followed one level only, and
/// employee 12 was written naming the rejected 9), and the rows of another entity naming one of
/// them too. Run, rehearsal, check and verify agree (verify followed no chain either).
#[tokio::test]
async fn rejections_cascade_down_a_self_referencing_chain_on_mongodb() {
    rejections_cascade(false).await;
}

#[tokio::test]
async fn rejections_cascade_down_a_self_referencing_chain_on_appwrite() {
    rejections_cascade(true).await;
}

async fn rejections_cascade(appwrite: bool) {
    let w = World::new(if appwrite {
        "ref_self_chain_aw"
    } else {
        "ref_self_chain"
    })
    .await;
    // 1 ← 5 ← 9 ← 12 ← 3 (a row naming a later key), and 20 naming 1; 5 breaks its rule.
    w.sql(
        "CREATE TABLE employees (id int PRIMARY KEY, reports_to int, title text, extra jsonb);
         INSERT INTO employees VALUES (1, NULL, 'Boss'), (5, 1, 'Sales Support Agent'),
           (9, 5, 'Clerk'), (12, 9, 'Clerk'), (3, 12, 'Intern'), (20, 1, 'Clerk'),
           (21, 20, 'Clerk');
         -- A JSON array holding a null: an Appwrite JSON text column takes it (adv43 F11: check
         -- judged it by no table, as an array column, left 20 out and rejected 21).
         UPDATE employees SET extra = '[1, null]' WHERE id = 20;
         CREATE TABLE desks (id int PRIMARY KEY, employee int);
         INSERT INTO desks VALUES (100, 12), (101, 20), (102, 3);",
    )
    .await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(
        dir.join("mappings/employees.toml"),
        "version = 1\nname = \"employees\"\n[source]\ntable = \"employees\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"reportsTo\"\ncolumn = \"reports_to\"\nreference = \"employees\"\n\
         validate = { exists = true }\n\
         [[field]]\npath = \"title\"\ncolumn = \"title\"\nvalidate = { max_length = 10 }\n\
         [[field]]\npath = \"extra\"\ncolumn = \"extra\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("mappings/desks.toml"),
        "version = 1\nname = \"desks\"\n[source]\ntable = \"desks\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"employeeId\"\ncolumn = \"employee\"\nreference = \"employees\"\n\
         validate = { exists = true }\n",
    )
    .unwrap();
    let pipeline = dir.join("staff.toml");
    std::fs::write(
        &pipeline,
        "version = 1\nname = \"staff\"\nmappings_dir = \"mappings\"\n\
         [[stage]]\nname = \"staff\"\nentities = [\"employees\"]\n\
         [[stage]]\nname = \"desks\"\nentities = [\"desks\"]\ndepends_on = [\"staff\"]\n",
    )
    .unwrap();
    let pipeline = pipeline.display().to_string();
    let aw = Aw::start("ref-self-chain").await;
    let run = |args: Vec<&str>| {
        let mut all = args;
        let target = if appwrite { "appwrite" } else { "mongodb" };
        all.extend(["--target", target, "--pipeline", pipeline.as_str()]);
        let all: Vec<String> = all.into_iter().map(String::from).collect();
        let (w, aw) = (&w, &aw);
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            aw.cutover_in(w, "staff", &refs).await
        }
    };
    let rejected = |w: &World| {
        let report = w.latest_report();
        let run_id = report["run_id"].as_str().unwrap().to_string();
        (counts(&report), lines(w.rejects(&run_id)))
    };
    let r = |k: &str, rule: &str| ("employees".to_string(), k.to_string(), rule.to_string());
    let d = |k: &str| {
        (
            "desks".to_string(),
            k.to_string(),
            "reference_rejected".to_string(),
        )
    };
    let expected = (
        vec![
            ("desks".to_string(), 1, 2, 0),
            ("employees".to_string(), 3, 4, 0),
        ],
        vec![
            d("100"),
            d("102"),
            r("12", "reference_rejected"),
            r("3", "reference_rejected"),
            r("5", "max_length"),
            r("9", "reference_rejected"),
        ],
    );

    let out = run(vec!["check", "--json"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let by_rule: u64 = findings(&out)
        .iter()
        .filter(|f| f.2 == "reference_rejected")
        .map(|f| f.4)
        .sum();
    assert_eq!(by_rule, 5, "{}", text(&out));
    let out = run(vec!["migrate", "--quiet", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(rejected(&w).0, expected.0);
    let out = run(vec!["migrate", "--quiet"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(rejected(&w), expected);
    let out = run(vec!["verify"]).await;
    assert!(out.status.success(), "{}", text(&out));
    w.drop().await;
}
