//! Unique `[[index]]`es into Appwrite. Appwrite makes a table's indexes before the load and
//! refuses (409) each row that repeats a key a written row holds, so the run writes the first
//! and rejects the others under `unique_index` — every row accounted for, `check` counting them
//! in advance, `verify` passing after. Shapes: text that differs only in case, keys made equal
//! by transforms, NULLs (which repeat freely in Appwrite's MariaDB, unlike MongoDB), a compound
//! index with a NULL part, numbers, a partial index (no Appwrite counterpart: not made), distinct
//! data, and a parent with child-table rows (the refused parent's child rows go too). The
//! server's side is the stand-in (held to Appwrite 1.8's answers: a 409 `row_already_exists`).

mod common;

use std::collections::BTreeSet;

use common::World;
use common::standin::Aw;

const KEY: &str = "unique-key";

struct Case {
    name: &'static str,
    /// `(id, code, n)` rows of table `u`.
    rows: &'static str,
    /// Options of the `code` field.
    code_options: &'static str,
    index: &'static str,
    /// Source keys the run rejects under `unique_index`.
    rejected: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "case",
        rows: "(1,'Abc',1),(2,'abc',2),(3,'ABD',3)",
        code_options: "",
        index: "keys = [\"code\"]\nunique = true",
        rejected: &["2"],
    },
    // MariaDB's case- and accent-insensitive PAD SPACE collations: one key.
    Case {
        name: "accents",
        rows: "(1,'Ärger',1),(2,'arger  ',2),(3,' arger',3),(4,'b',4)",
        code_options: "",
        index: "keys = [\"code\"]\nunique = true",
        rejected: &["2"],
    },
    Case {
        name: "transformed",
        rows: "(1,'Abc',1),(2,' abc ',2),(3,'x',3),(4,'X ',4)",
        code_options: "transform = [\"trim\"]",
        index: "keys = [\"code\"]\nunique = true",
        rejected: &["2", "4"],
    },
    Case {
        name: "nulls",
        rows: "(1,NULL,1),(2,NULL,2),(3,'a',3),(4,'a',4),(5,NULL,5)",
        code_options: "",
        index: "keys = [\"code\"]\nunique = true",
        rejected: &["4"],
    },
    Case {
        name: "compound",
        rows: "(1,'a',1),(2,'a',1),(3,'a',2),(4,NULL,1),(5,NULL,1),(6,'b',1)",
        code_options: "",
        index: "keys = [\"code\", \"-n\"]\nunique = true",
        rejected: &["2"],
    },
    Case {
        name: "numbers",
        rows: "(1,'a',7),(2,'b',7),(3,'c',8),(4,'d',7)",
        code_options: "",
        index: "keys = [\"n\"]\nunique = true",
        rejected: &["2", "4"],
    },
    // Two unique indexes: rows 11–15 each repeat one row's `code` and another's `n`. In key
    // order they are the ones refused (5); had they come first, rows 1–10 would have been (10).
    Case {
        name: "two_indexes",
        rows: "(1,'a1',1),(2,'a2',2),(3,'a3',3),(4,'a4',4),(5,'a5',5),(6,'a6',6),(7,'a7',7),(8,'a8',8),(9,'a9',9),(10,'a10',10),(11,'a1',2),(12,'a3',4),(13,'a5',6),(14,'a7',8),(15,'a9',10)",
        code_options: "",
        // Named so that both names become one Appwrite key: each is made all the same.
        index: "keys = [\"code\"]\nunique = true\nname = \"by code\"\n[[index]]\nkeys = [\"n\"]\nunique = true\nname = \"by_code\"",
        rejected: &["11", "12", "13", "14", "15"],
    },
    Case {
        name: "partial",
        rows: "(1,'a',1),(2,'a',2)",
        code_options: "",
        index: "keys = [\"code\"]\nunique = true\npartial = { n = { \"$exists\" = true } }",
        rejected: &[],
    },
    Case {
        name: "distinct",
        rows: "(1,'a',1),(2,'b',2),(3,NULL,3)",
        code_options: "",
        index: "keys = [\"code\", \"n\"]\nunique = true",
        rejected: &[],
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_row_an_appwrite_unique_index_refuses_is_rejected_counted_by_check_and_excused_by_verify()
 {
    let aw = Aw::start(KEY).await;
    for case in CASES {
        one_case(&aw, case, false).await;
    }
}

/// The same asked for several batches side by side (`--concurrency 4`, `--batch-size 1`): a
/// table with a unique index is written one batch at a time in key order all the same, since
/// which rows the server refuses (and with two unique indexes, how many) depends on the order
/// they arrive in — the rows refused are those `check` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_reject_as_many_rows_as_check_counts() {
    let aw = Aw::start(KEY).await;
    for case in CASES.iter().filter(|c| !c.rejected.is_empty()) {
        one_case(&aw, case, true).await;
    }
}

async fn one_case(aw: &Aw, case: &Case, concurrent: bool) {
    let name = format!("{}{}", case.name, if concurrent { "_c" } else { "" });
    let w = World::new(&format!("aw_unique_{name}")).await;
    w.sql(&format!(
        "CREATE TABLE u (id int PRIMARY KEY, code text, n int);
         INSERT INTO u VALUES {};",
        case.rows
    ))
    .await;
    let mapping = format!(
        "version = 1\nname = \"u\"\n[source]\ntable = \"u\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"code\"\ncolumn = \"code\"\n{}\n\
         [[field]]\npath = \"n\"\ncolumn = \"n\"\n\
         [[index]]\n{}\n",
        case.code_options, case.index
    );
    let pipeline = common::one_entity_pipeline(&w, "u", &mapping);
    let pipeline = pipeline.to_str().unwrap();
    let db = format!("uq_{name}");

    // check counts the rows the run will reject, and says so in its exit code.
    let out = aw
        .cutover_in(
            &w,
            &db,
            &[
                "check",
                "--json",
                "--full",
                "--target",
                "appwrite",
                "--pipeline",
                pipeline,
            ],
        )
        .await;
    let text = common::output_text(&out);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
    let predicted: u64 = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == "unique_index" && f["severity"] == "reject")
        .map(|f| f["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(predicted, case.rejected.len() as u64, "{name}: {report}");
    let code = if case.rejected.is_empty() { 0 } else { 2 };
    assert_eq!(out.status.code(), Some(code), "{name}: {text}");
    let not_made = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["rule"] == "appwrite_index_not_made");
    assert_eq!(not_made, case.name == "partial", "{name}: {report}");

    // The rehearsal rejects the same rows as the run, in key order.
    let out = aw
        .cutover_in(
            &w,
            &db,
            &[
                "migrate",
                "--dry-run",
                "--target",
                "appwrite",
                "--pipeline",
                pipeline,
                "--quiet",
            ],
        )
        .await;
    let text = common::output_text(&out);
    let rehearsal = w.latest_report();
    assert_eq!(
        rehearsal["entities"][0]["rejected"],
        case.rejected.len(),
        "{name}: {text}"
    );
    let rehearsed: BTreeSet<String> = w
        .rejects(rehearsal["run_id"].as_str().unwrap())
        .into_iter()
        .map(|(_, k, _, rule)| {
            assert_eq!(rule, "unique_index", "{name}");
            k
        })
        .collect();
    let want: BTreeSet<String> = case.rejected.iter().map(|k| k.to_string()).collect();
    assert_eq!(rehearsed, want, "{name}: {text}");
    assert!(
        aw.s.rows(&db, "u").is_empty(),
        "{name}: the rehearsal wrote"
    );

    let mut args = vec![
        "migrate",
        "--target",
        "appwrite",
        "--pipeline",
        pipeline,
        "--quiet",
    ];
    if concurrent {
        args.extend(["--concurrency", "4", "--batch-size", "1"]);
    }
    let out = aw.cutover_in(&w, &db, &args).await;
    let text = common::output_text(&out);
    let code = if case.rejected.is_empty() { 0 } else { 2 };
    assert_eq!(out.status.code(), Some(code), "{name}: {text}");
    let report = w.latest_report();
    let e = &report["entities"][0];
    let (read, written, rejected) = (
        e["read"].as_u64().unwrap(),
        e["written"].as_u64().unwrap(),
        e["rejected"].as_u64().unwrap(),
    );
    assert_eq!(read, w.pg_count("u").await, "{name}: {text}");
    assert_eq!(
        read,
        written + rejected + e["skipped"].as_u64().unwrap_or(0),
        "{name}: {report}"
    );
    assert_eq!(rejected, case.rejected.len() as u64, "{name}: {text}");
    let run_id = report["run_id"].as_str().unwrap();
    let rejects = w.rejects(run_id);
    assert!(
        rejects.iter().all(|(_, _, _, rule)| rule == "unique_index"),
        "{name}: {rejects:?}"
    );
    let keys: BTreeSet<String> = rejects.iter().map(|(_, k, _, _)| k.clone()).collect();
    // In key order, the row written first keeps the key (also when asked for concurrency).
    let want: BTreeSet<String> = case.rejected.iter().map(|k| k.to_string()).collect();
    assert_eq!(keys, want, "{name}: {text}");
    assert_eq!(keys.len(), case.rejected.len(), "{name}: {rejects:?}");
    // The server holds exactly the rows written: none of the rejected ones.
    let held: BTreeSet<String> =
        aw.s.rows(&db, "u")
            .iter()
            .map(|r| r["$id"].as_str().unwrap().to_string())
            .collect();
    assert_eq!(held.len() as u64, written, "{name}");
    assert!(held.is_disjoint(&keys), "{name}: {held:?} {keys:?}");
    // A partial index has no Appwrite counterpart: it is not made (a whole unique index would
    // refuse rows the mapping allows).
    let indexes = aw.s.table_indexes(&db, "u");
    let made = match case.name {
        "partial" => 0,
        "two_indexes" => 2,
        _ => 1,
    };
    assert_eq!(indexes.len(), made, "{name}: {indexes:?}");

    // verify excuses the rows the server refused in the run.
    let out = aw
        .cutover_in(
            &w,
            &db,
            &["verify", "--target", "appwrite", "--pipeline", pipeline],
        )
        .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{name}: {}",
        common::output_text(&out)
    );
    w.drop().await;
}

/// A parent row refused by a unique index takes its child-table rows with it: the child table
/// holds only the children of written parents, and `check` counts the refused parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_parent_leaves_no_child_table_rows() {
    let aw = Aw::start(KEY).await;
    let w = World::new("aw_unique_children").await;
    w.sql(
        "CREATE TABLE u (id int PRIMARY KEY, code text);
         INSERT INTO u VALUES (1, 'a'), (2, 'A'), (3, 'b');
         CREATE TABLE kids (id int PRIMARY KEY, u_id int, name text);
         INSERT INTO kids VALUES (10, 1, 'x'), (20, 2, 'y'), (21, 2, 'z'), (30, 3, 'w');",
    )
    .await;
    let mapping = "version = 1\nname = \"u\"\n[source]\ntable = \"u\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"code\"\ncolumn = \"code\"\n\
         [[embed]]\npath = \"kids\"\ntable = \"kids\"\nforeign_key = \"u_id\"\norder_by = [\"id\"]\nappwrite = \"table\"\n\
         [[embed.field]]\npath = \"name\"\ncolumn = \"name\"\n\
         [[index]]\nkeys = [\"code\"]\nunique = true\n\
         [[index]]\nkeys = [\"kids.name\"]\nunique = true\n";
    let pipeline = common::one_entity_pipeline(&w, "u", mapping);
    let pipeline = pipeline.to_str().unwrap();
    let out = aw
        .cutover_in(
            &w,
            "uqk",
            &[
                "check",
                "--json",
                "--full",
                "--target",
                "appwrite",
                "--pipeline",
                pipeline,
            ],
        )
        .await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", common::output_text(&out)));
    let unique: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == "unique_index")
        .collect();
    assert_eq!(unique.len(), 1, "{report}");
    assert_eq!(unique[0]["rows"], 1, "{report}");
    assert_eq!(unique[0]["example_key"], "2", "{report}");
    // A unique index over a child table's field is not made in Appwrite: said.
    let not_made: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == "appwrite_index_not_made")
        .collect();
    assert_eq!(not_made.len(), 1, "{report}");
    assert_eq!(not_made[0]["path"], "kids.name", "{report}");
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));

    let out = aw
        .cutover_in(
            &w,
            "uqk",
            &[
                "migrate",
                "--target",
                "appwrite",
                "--pipeline",
                pipeline,
                "--quiet",
            ],
        )
        .await;
    let text = common::output_text(&out);
    let report = w.latest_report();
    assert_eq!(report["entities"][0]["rejected"], 1, "{text}");
    assert_eq!(report["entities"][0]["written"], 2, "{text}");
    let child = aw.table_containing("uqk", "kids");
    let mut names: Vec<String> =
        aw.s.rows("uqk", &child)
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect();
    names.sort();
    assert_eq!(names, ["w", "x"], "row 2's children are not kept: {text}");
    let out = aw
        .cutover_in(
            &w,
            "uqk",
            &["verify", "--target", "appwrite", "--pipeline", pipeline],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    w.drop().await;
}

/// `unique` added to or taken off an index between runs reaches Appwrite: the index is made
/// again (Appwrite cannot change one). A unique index over rows already in the table that repeat
/// a key cannot be built: the run stops before writing and says how to go on, and the failed
/// index is taken away again, so that the run after the repeats are removed makes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_made_unique_or_not_since_is_made_again() {
    let aw = Aw::start(KEY).await;
    let w = World::new("aw_unique_changed").await;
    w.sql(
        "CREATE TABLE u (id int PRIMARY KEY, code text); INSERT INTO u VALUES (1, 'a'), (2, 'A');",
    )
    .await;
    let mapping = |unique: bool| {
        format!(
            "version = 1\nname = \"u\"\n[source]\ntable = \"u\"\nkey = [\"id\"]\n\
             [[field]]\npath = \"code\"\ncolumn = \"code\"\n\
             [[index]]\nkeys = [\"code\"]\nunique = {unique}\n"
        )
    };
    let pipeline = common::one_entity_pipeline(&w, "u", &mapping(false));
    let pipeline = pipeline.to_str().unwrap().to_string();
    let migrate = |extra: &'static [&'static str]| {
        let mut args = vec![
            "migrate",
            "--target",
            "appwrite",
            "--pipeline",
            pipeline.as_str(),
        ];
        args.extend_from_slice(extra);
        args
    };
    let index = || aw.s.get_index("uqc", "u", "ix_code");
    let out = aw.cutover_in(&w, "uqc", &migrate(&[])).await;
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    assert_eq!(index().unwrap()["type"], "key");

    // Made unique: the rows in the table repeat a key (without case): refused before writing.
    let write_mapping = |unique: bool| {
        std::fs::write(w.dir.path().join("mappings/u.toml"), mapping(unique)).unwrap()
    };
    write_mapping(true);
    w.sql("UPDATE u SET code = 'b' WHERE id = 2").await;
    let out = aw.cutover_in(&w, "uqc", &migrate(&["--rerun"])).await;
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("cannot be made: rows already in the table repeat a key"),
        "{text}"
    );
    assert!(index().is_err(), "the failed index is taken away: {text}");
    let codes = || {
        let mut v: Vec<String> =
            aw.s.rows("uqc", "u")
                .iter()
                .map(|r| r["code"].as_str().unwrap().to_string())
                .collect();
        v.sort();
        v
    };
    assert_eq!(codes(), ["A", "a"], "nothing written");
    // The repeat removed from the table: the next run makes the index and writes.
    aw.s.delete_row("uqc", "u", "2").unwrap();
    let out = aw.cutover_in(&w, "uqc", &migrate(&["--rerun"])).await;
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(index().unwrap()["type"], "unique");
    assert_eq!(codes(), ["a", "b"]);

    // `unique` taken off: made again as a key index, said in the run's output.
    write_mapping(false);
    let out = aw.cutover_in(&w, "uqc", &migrate(&["--rerun"])).await;
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(index().unwrap()["type"], "key");
    assert!(
        text.contains("Appwrite index u.ix_code made again before the load"),
        "{text}"
    );
    w.drop().await;
}

/// `--sync-deletes` into a table with a unique index (the outside tester's adv19 F3): a new
/// row taking the key of a row gone from the source was refused, the gone row still holding it
/// until the deletions after the load. Such a table's deletions run before the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_deletes_free_the_keys_of_gone_rows_before_the_load() {
    let aw = Aw::start(KEY).await;
    let w = World::new("aw_unique_sync").await;
    w.sql(
        "CREATE TABLE u (id int PRIMARY KEY, code text); INSERT INTO u VALUES (1, 'a'), (2, 'b');",
    )
    .await;
    let mapping = "version = 1\nname = \"u\"\n[source]\ntable = \"u\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"code\"\ncolumn = \"code\"\n\
         [[index]]\nkeys = [\"code\"]\nunique = true\n";
    let pipeline = common::one_entity_pipeline(&w, "u", mapping);
    let pipeline = pipeline.to_str().unwrap();
    let migrate = ["migrate", "--target", "appwrite", "--pipeline", pipeline];
    let out = aw.cutover_in(&w, "uqs", &migrate).await;
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    w.sql("DELETE FROM u WHERE id = 1; INSERT INTO u VALUES (3, 'A');")
        .await;
    let out = aw
        .cutover_in(
            &w,
            "uqs",
            &[&migrate[..], &["--rerun", "--sync-deletes"]].concat(),
        )
        .await;
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let report = w.latest_report();
    let e = &report["entities"][0];
    assert_eq!(
        (
            e["written"].as_u64(),
            e["rejected"].as_u64(),
            e["deleted"].as_u64()
        ),
        (Some(2), Some(0), Some(1)),
        "{report}"
    );
    let mut ids: Vec<String> =
        aw.s.rows("uqs", "u")
            .iter()
            .map(|r| r["$id"].as_str().unwrap().to_string())
            .collect();
    ids.sort();
    assert_eq!(ids, ["2", "3"], "{text}");
    let out = aw
        .cutover_in(
            &w,
            "uqs",
            &["verify", "--target", "appwrite", "--pipeline", pipeline],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    w.drop().await;
}
