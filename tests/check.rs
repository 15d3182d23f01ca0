//! `cutover check` against the real servers: lists the sample registry's lossy and invalid data
//! with counts, and blocks on what would break a run.

mod common;

use bson::{Document, doc};
use common::World;

#[tokio::test]
async fn check_lists_lossy_and_invalid_data_with_counts_and_writes_nothing() {
    let w = World::new("check").await;
    w.load_registry(150);
    let out = w
        .cutover()
        .args(["check", "--json", "--full", "--pipeline"])
        .arg(common::repo().join("pipelines/registry.toml"))
        .output()
        .unwrap();
    // Rows will be rejected: exit 2, like the run that would reject them.
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["target"].as_str().unwrap().contains("replica set"),
        "{report}"
    );
    assert!(report["source"].as_str().unwrap().starts_with("PostgreSQL"));
    let find = |entity: &str, rule: &str| -> u64 {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["entity"] == entity && f["rule"] == rule)
            .map(|f| f["rows"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(find("patients", "timestamp_truncated"), 5);
    assert_eq!(find("patients", "required"), 5);
    assert_eq!(find("patients", "phone"), 2);
    assert_eq!(find("immunizations", "exists"), 2);
    assert_eq!(find("facilities", "max"), 1);
    let entities = report["entities"].as_array().unwrap();
    assert!(
        entities
            .iter()
            // An empty source (documents: loaded without its files) has no rate to estimate by.
            .all(|e| e["key_unique"] == true && (e["estimated_ms"].is_u64() || e["rows"] == 0))
    );
    let names = w.mongo().await.list_collection_names().await.unwrap();
    assert!(names.is_empty(), "check wrote {names:?}");
    // Accepted on request, and the text says how many rows.
    let out = w
        .cutover()
        .args(["check", "--full", "--allow-rejects", "--pipeline"])
        .arg(common::repo().join("pipelines/registry.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("rows will be rejected") && text.contains("accepted"),
        "{text}"
    );

    // A key that is not unique blocks the run.
    w.sql("ALTER TABLE settings DROP CONSTRAINT settings_pkey; INSERT INTO settings VALUES ('features', '{}', now())").await;
    let out = w
        .cutover()
        .args(["check", "settings", "--pipeline"])
        .arg(common::repo().join("pipelines/registry.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("BLOCKING: settings: the key (key) is not unique"),
        "{text}"
    );
    w.drop().await;
}

const THINGS_SCHEMA: &str =
    "CREATE TABLE things (id int PRIMARY KEY, name text, changed timestamptz, revision bigint);
INSERT INTO things VALUES (1, 'one', now(), 1), (2, 'two', now(), 2);
CREATE TABLE parts (id int PRIMARY KEY, label text);
INSERT INTO parts VALUES (1, 'bolt');";

/// A pipeline of `things` and `parts` in the world's directory, with the mapping bodies given.
fn write_things(w: &World, things: &str, parts: &str) -> std::path::PathBuf {
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/things.toml"), things).unwrap();
    std::fs::write(dir.join("mappings/parts.toml"), parts).unwrap();
    let pipeline = dir.join("things.toml");
    std::fs::write(
        &pipeline,
        "version = 1\nname = \"things\"\nmappings_dir = \"mappings\"\n[[stage]]\nname = \"all\"\nentities = [\"things\", \"parts\"]\n",
    )
    .unwrap();
    pipeline
}

fn things_mapping(source_extra: &str, field_path: &str) -> String {
    format!(
        "version = 1\nname = \"things\"\n[source]\ntable = \"things\"\nkey = [\"id\"]\n{source_extra}\n[[field]]\npath = \"{field_path}\"\ncolumn = \"name\"\n"
    )
}

fn parts_mapping(source_extra: &str) -> String {
    format!(
        "version = 1\nname = \"parts\"\n[source]\ntable = \"parts\"\nkey = [\"id\"]\n{source_extra}\n[[field]]\npath = \"label\"\ncolumn = \"label\"\n"
    )
}

/// Runs `cutover COMMAND --pipeline PIPELINE`: (exit code, stdout + stderr).
fn run(w: &World, command: &str, pipeline: &std::path::Path) -> (Option<i32>, String) {
    let out = w
        .cutover()
        .args([command, "--pipeline"])
        .arg(pipeline)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test]
async fn plan_and_check_block_on_an_updated_at_that_is_not_a_date_column_of_the_source() {
    let w = World::new("updated_at").await;
    w.sql(THINGS_SCHEMA).await;

    // A valid mapping passes both, so the refusals below are about updated_at alone.
    let pipeline = write_things(
        &w,
        &things_mapping("updated_at = \"changed\"", "name"),
        &parts_mapping(""),
    );
    for command in ["plan", "check"] {
        let (code, text) = run(&w, command, &pipeline);
        assert_eq!(code, Some(0), "{command}: {text}");
    }

    // A column the source lacks, and a column of the wrong type: both listed, not only the first.
    let pipeline = write_things(
        &w,
        &things_mapping("updated_at = \"modified_at\"", "name"),
        &parts_mapping("updated_at = \"label\""),
    );
    let things = w.dir.path().join("mappings/things.toml");
    let parts = w.dir.path().join("mappings/parts.toml");
    for command in ["plan", "check"] {
        let (code, text) = run(&w, command, &pipeline);
        assert_eq!(code, Some(1), "{command}: {text}");
        let missing = format!(
            "BLOCKING: {}: `source.updated_at`: no column `modified_at` in \"things\" (its date and timestamp columns: changed)",
            things.display()
        );
        assert!(text.contains(&missing), "{command}: {text}");
        let wrong_type = format!(
            "BLOCKING: {}: `source.updated_at`: column `label` has type TEXT",
            parts.display()
        );
        assert!(text.contains(&wrong_type), "{command}: {text}");
    }
    // An integer column is no point in time either.
    let pipeline = write_things(
        &w,
        &things_mapping("updated_at = \"revision\"", "name"),
        &parts_mapping(""),
    );
    let (code, text) = run(&w, "plan", &pipeline);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("`source.updated_at`: column `revision` has type INT8"),
        "{text}"
    );
    w.drop().await;
}

#[tokio::test]
async fn plan_and_check_refuse_invalid_collection_names_and_field_paths_naming_file_and_key() {
    let w = World::new("mongo_names").await;
    w.sql(THINGS_SCHEMA).await;
    let cases = [
        (
            things_mapping("", "name").replace(
                "name = \"things\"\n",
                "name = \"things\"\ncollection = \"\"\n",
            ),
            "`collection`: `` is not a valid collection name: the name is empty",
        ),
        (
            things_mapping("", "name").replace(
                "name = \"things\"\n",
                "name = \"things\"\ncollection = \"system.things\"\n",
            ),
            "`collection`: `system.things` is not a valid collection name",
        ),
        (
            things_mapping("", "a..b"),
            "`field[0] (a..b)`: `a..b` is not a valid target path: a segment is empty",
        ),
        (
            things_mapping("", "a\\u0000b"),
            "`field[0] (a\\0b)`: `a\\0b` is not a valid target path: a field name cannot contain a NUL character",
        ),
        (
            things_mapping("", "$name"),
            "`field[0] ($name)`: `$name` is not a valid target path: a field name cannot start with `$`",
        ),
        // A misspelt table, of the source or of an embed: the part of the mapping is named.
        (
            things_mapping("", "name").replace("table = \"things\"", "table = \"thing\""),
            "`source`: ",
        ),
        (
            things_mapping("", "name")
                + "[[embed]]\npath = \"parts\"\ntable = \"part\"\nforeign_key = \"id\"\n[[embed.field]]\npath = \"label\"\ncolumn = \"label\"\n",
            "`embed[0] (parts)`: ",
        ),
    ];
    for (mapping, message) in cases {
        let pipeline = write_things(&w, &mapping, &parts_mapping(""));
        let expected = format!(
            "{}: {message}",
            w.dir.path().join("mappings/things.toml").display()
        );
        for command in ["plan", "check"] {
            let (code, text) = run(&w, command, &pipeline);
            assert_eq!(code, Some(1), "{command}: {text}");
            assert!(text.contains(&expected), "{command}: {expected}\n{text}");
        }
    }
    let names = w.mongo().await.list_collection_names().await.unwrap();
    assert!(names.is_empty(), "plan or check wrote {names:?}");
    w.drop().await;
}

/// A source that cannot be read is a blocking finding naming the entity — not "no data" — and it
/// does not poison the checks of the entities after it (each runs under a savepoint).
#[tokio::test]
async fn a_failing_source_blocks_and_the_entities_after_it_are_still_checked() {
    let w = World::new("check_fail").await;
    w.sql(THINGS_SCHEMA).await;
    w.sql("CREATE VIEW broken AS SELECT id, name, 10 / (id - 2) AS ratio FROM things")
        .await;
    // `things` reads a query that fails on its second row; `parts` is fine.
    let things = "version = 1\nname = \"things\"\n[source]\nquery = \"SELECT id, name, ratio FROM broken\"\nkey = [\"id\"]\n[[field]]\npath = \"ratio\"\ncolumn = \"ratio\"\n";
    let pipeline = write_things(&w, things, &parts_mapping(""));
    let (code, text) = run(&w, "check", &pipeline);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("BLOCKING: things:") && text.contains("division by zero"),
        "{text}"
    );
    assert!(!text.contains("BLOCKING: parts"), "{text}");
    assert!(!text.contains("check passed"), "{text}");
    // A source table that is missing blocks its own entity only.
    let things = things_mapping("", "name").replace("table = \"things\"", "table = \"nowhere\"");
    let pipeline = write_things(&w, &things, &parts_mapping(""));
    let (code, text) = run(&w, "check", &pipeline);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("nowhere"), "{text}");
    assert!(!text.contains("BLOCKING: parts"), "{text}");
    assert!(!text.contains("current transaction is aborted"), "{text}");
    w.drop().await;
}

/// The key of the parents in `check_counts_in_advance…`: its columns, the child's foreign key
/// columns, and the literal (SQL) and display text of the key of parent `n`.
struct KeyShape {
    name: &'static str,
    parent_cols: &'static str,
    primary_key: &'static str,
    child_cols: &'static str,
    key: &'static str,
    foreign_key: &'static str,
    /// (SQL literal of the key columns, the key as rejects files and findings name it)
    keys: fn(u32) -> (String, String),
}

const INT_KEY: KeyShape = KeyShape {
    name: "int",
    parent_cols: "id int",
    primary_key: "id",
    child_cols: "parent_id int",
    key: r#"["id"]"#,
    foreign_key: r#""parent_id""#,
    keys: |n| (n.to_string(), n.to_string()),
};

/// Text keys whose order differs between byte order and a linguistic collation, with case,
/// spaces and non-ASCII letters.
const TEXT_KEY: KeyShape = KeyShape {
    name: "text",
    parent_cols: "code text",
    primary_key: "code",
    child_cols: "parent_code text",
    key: r#"["code"]"#,
    foreign_key: r#""parent_code""#,
    keys: |n| {
        let k = match n {
            1 => "zeta",
            2 => "Alpha",
            3 => "alpha",
            4 => "b c",
            5 => "Ärger",
            6 => "10",
            7 => "9",
            _ => "orphan key",
        };
        (format!("'{k}'"), k.to_string())
    },
};

/// `char(3)` keys holding characters below the blank (`E'a\t'`): PostgreSQL compares char(n)
/// without its trailing blanks (`'a'` before `E'a\t'`) while the padded values order the other
/// way byte for byte — the children of such parents were lost.
const CHAR_KEY: KeyShape = KeyShape {
    name: "char",
    parent_cols: "code char(3)",
    primary_key: "code",
    child_cols: "parent_code char(3)",
    key: r#"["code"]"#,
    foreign_key: r#""parent_code""#,
    keys: |n| {
        let (sql, text) = match n {
            1 => ("E'a\\t'", "a\t "),
            2 => ("'a'", "a  "),
            3 => ("E'a\\n'", "a\n "),
            4 => ("'a b'", "a b"),
            5 => ("E'\\t'", "\t  "),
            6 => ("' '", "   "),
            7 => ("'b'", "b  "),
            _ => ("'zz'", "zz "),
        };
        (sql.to_string(), text.to_string())
    },
};

/// A composite key (text, int) whose first part repeats with different case.
const COMPOSITE_KEY: KeyShape = KeyShape {
    name: "composite",
    parent_cols: "region text, seq int",
    primary_key: "region, seq",
    child_cols: "p_region text, p_seq int",
    key: r#"["region", "seq"]"#,
    foreign_key: r#"["p_region", "p_seq"]"#,
    keys: |n| {
        let region = ["eu", "EU", "us west"][n as usize % 3];
        let seq = 100 - n as i64;
        (format!("'{region}', {seq}"), format!("{region}|{seq}"))
    },
};

/// `check --full` counts, rule by rule, exactly the rows `migrate` rejects — also those rejected
/// for an embedded child: a child column that cannot be decoded, a child field failing its rule,
/// and a document too large because of its children — and the run rejects exactly those parents,
/// named by their keys.
async fn check_counts_in_advance_every_row_migrate_rejects(shape: &KeyShape) {
    let w = World::new(&format!("check_children_{}", shape.name)).await;
    let k = |n: u32| (shape.keys)(n).0;
    let dates = [
        (1, "2020-01-01"),
        (2, "2020-01-02"),
        (3, "2020-01-03"),
        (4, "2020-01-04"),
        (5, "infinity"),
        (6, "2020-01-06"),
        (7, "2020-01-07"),
    ];
    let parents: Vec<String> = dates
        .iter()
        .map(|(n, d)| format!("({}, '{d}')", k(*n)))
        .collect();
    // 1: a child whose date cannot be written; 2: two children's e-mails fail their rule (one
    // row, counted once per rule by check as by the run's rows); 3: fine; 4: a
    // child without its required name; 5: its own date; 6: 9 × 2 MB of children (over 16 MiB);
    // 7: no children; 99: an orphan child.
    let kids = [
        (10, 1, "'infinity'", "'a'", "a@example.com"),
        (11, 1, "'2019-01-01'", "'b'", "b@example.com"),
        (20, 2, "'2019-01-01'", "'c'", "not an address"),
        (21, 2, "'2019-01-01'", "'c2'", "nor this"),
        (30, 3, "'2019-01-01'", "'d'", "d@example.com"),
        (40, 4, "'2019-01-01'", "NULL", "e@example.com"),
        (50, 5, "'2019-01-01'", "'f'", "f@example.com"),
        (990, 99, "'2019-01-01'", "'g'", "g@example.com"),
    ];
    let kids: Vec<String> = kids
        .iter()
        .map(|(id, p, born, name, email)| {
            format!("({id}, {}, {born}, {name}, '{email}', '')", k(*p))
        })
        .collect();
    w.sql(&format!(
        "CREATE TABLE parents ({parent_cols}, since date, PRIMARY KEY ({pk}));
         CREATE TABLE kids (id int PRIMARY KEY, {child_cols}, born date, name text, email text, notes text);
         INSERT INTO parents VALUES {parents};
         INSERT INTO kids VALUES {kids};
         INSERT INTO kids SELECT 60 + g, {six}, '2019-01-01', 'h', 'h@example.com', repeat('x', 2000000)
           FROM generate_series(0, 8) g;",
        parent_cols = shape.parent_cols,
        pk = shape.primary_key,
        child_cols = shape.child_cols,
        parents = parents.join(", "),
        kids = kids.join(", "),
        six = k(6),
    ))
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "parents",
        &format!(
            r#"version = 1
name = "parents"
[source]
table = "parents"
key = {key}
[[field]]
path = "since"
column = "since"
[[embed]]
path = "kids"
table = "kids"
foreign_key = {foreign_key}
order_by = ["id"]
[[embed.field]]
path = "born"
column = "born"
[[embed.field]]
path = "name"
column = "name"
validate = {{ required = true }}
[[embed.field]]
path = "email"
column = "email"
validate = {{ email = true }}
[[embed.field]]
path = "notes"
column = "notes"
"#,
            key = shape.key,
            foreign_key = shape.foreign_key,
        ),
    );
    let out = w
        .cutover()
        .args(["check", "--json", "--full", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rejected_keys: std::collections::BTreeSet<String> = [1, 2, 4, 5, 6]
        .into_iter()
        .map(|n| (shape.keys)(n).1)
        .collect();
    let mut found = std::collections::BTreeMap::new();
    for f in report["findings"].as_array().unwrap() {
        if f["severity"] == "reject" {
            *found
                .entry(f["rule"].as_str().unwrap().to_string())
                .or_insert(0u64) += f["rows"].as_u64().unwrap();
            let example = f["example_key"].as_str().unwrap();
            assert!(rejected_keys.contains(example), "{example}: {report}");
        }
    }
    let expected: std::collections::BTreeMap<String, u64> = [
        ("date_out_of_range", 2),
        ("email", 1),
        ("required", 1),
        ("document_too_large", 1),
    ]
    .into_iter()
    .map(|(r, n)| (r.to_string(), n))
    .collect();
    assert_eq!(found, expected, "{report}");

    // The run rejects the same rows, rule by rule, and names their keys.
    let out = w.migrate_with(&pipeline, &[]);
    let report = w.latest_report();
    let run_id = report["run_id"].as_str().unwrap().to_string();
    let mut rejected = std::collections::BTreeMap::new();
    let mut keys = std::collections::BTreeSet::new();
    let mut orphans = Vec::new();
    let mut lines = 0;
    // The rejects file has a line per violation (row 2's two e-mails are two); a rule's rows are
    // the distinct keys it names.
    let mut rows_of_rule = std::collections::BTreeSet::new();
    for (entity, key, stage, rule) in w.rejects(&run_id) {
        assert_eq!(entity, "parents");
        if rule == "orphan_child" {
            // The child of no parent: listed apart from the rejected parent rows.
            assert_eq!(stage, "embed");
            orphans.push(key);
            continue;
        }
        lines += 1;
        if rows_of_rule.insert((rule.clone(), key.clone())) {
            *rejected.entry(rule).or_insert(0u64) += 1;
        }
        keys.insert(key);
    }
    assert_eq!(lines, 6, "a line per violation: {rows_of_rule:?}");
    assert_eq!(rejected, expected, "{}", common::output_text(&out));
    assert_eq!(keys, rejected_keys, "{}", common::output_text(&out));
    assert_eq!(orphans.len(), 1, "the child of key 99: {orphans:?}");
    assert_eq!(w.count("parents").await, 2, "parents 3 and 7 are written");
    w.drop().await;
}

#[tokio::test]
async fn check_counts_in_advance_every_row_migrate_rejects_children_included() {
    check_counts_in_advance_every_row_migrate_rejects(&INT_KEY).await;
}

#[tokio::test]
async fn check_counts_child_rejects_in_advance_under_a_text_key() {
    check_counts_in_advance_every_row_migrate_rejects(&TEXT_KEY).await;
}

#[tokio::test]
async fn check_counts_child_rejects_in_advance_under_a_char_key() {
    check_counts_in_advance_every_row_migrate_rejects(&CHAR_KEY).await;
}

#[tokio::test]
async fn check_counts_child_rejects_in_advance_under_a_composite_key() {
    check_counts_in_advance_every_row_migrate_rejects(&COMPOSITE_KEY).await;
}

/// A text key or foreign key under a non-deterministic collation (equal values that differ in
/// bytes: `ABC` and `abc`) silently lost the children whose foreign key differed in case from
/// their parent's key: plan, check and migrate now refuse the mapping, naming the column.
#[tokio::test]
async fn keys_under_a_non_deterministic_collation_are_refused() {
    let w = World::new("check_ci_key").await;
    w.sql(
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE p (code text COLLATE ci PRIMARY KEY, name text);
         INSERT INTO p VALUES ('ABC', 'upper'), ('Zürich', 'city');
         CREATE TABLE c (id int PRIMARY KEY, pcode text COLLATE ci REFERENCES p (code), note text);
         INSERT INTO c VALUES (1, 'abc', 'x'), (2, 'ABC', 'y'), (3, 'zürich', 'z');
         CREATE TABLE q (code text PRIMARY KEY, name text);
         INSERT INTO q VALUES ('ABC', 'upper');",
    )
    .await;
    let embed = "[[embed]]\npath = \"kids\"\ntable = \"c\"\nforeign_key = \"pcode\"\norder_by = [\"id\"]\n\
                 [[embed.field]]\npath = \"note\"\ncolumn = \"note\"\n";
    let cases = [
        // The parent's key itself.
        (
            format!(
                "version = 1\nname = \"p\"\n[source]\ntable = \"p\"\nkey = [\"code\"]\n[[field]]\npath = \"name\"\ncolumn = \"name\"\n{embed}"
            ),
            "source.key",
            "code",
        ),
        // A deterministic parent key whose children's foreign key is not.
        (
            format!(
                "version = 1\nname = \"p\"\n[source]\ntable = \"q\"\nkey = [\"code\"]\n[[field]]\npath = \"name\"\ncolumn = \"name\"\n{embed}"
            ),
            "foreign_key",
            "pcode",
        ),
    ];
    for (mapping, key, column) in cases {
        let pipeline = common::one_entity_pipeline(&w, "p", &mapping);
        for command in ["plan", "check"] {
            let out = w
                .cutover()
                .arg(command)
                .arg("--pipeline")
                .arg(&pipeline)
                .output()
                .unwrap();
            let text = common::output_text(&out);
            assert_eq!(out.status.code(), Some(1), "{command}: {text}");
            assert!(
                text.contains(key)
                    && text.contains(&format!(
                        "column `{column}` has the non-deterministic collation `ci`"
                    )),
                "{command}: {text}"
            );
        }
        let out = w.migrate_with(&pipeline, &[]);
        assert_eq!(out.status.code(), Some(1), "{}", common::output_text(&out));
        assert_eq!(w.count("p").await, 0);
    }
    w.drop().await;
}

/// A key given twice (a table without a unique key, a query source): the second row's document
/// replaced the first's on an upsert, with "written 3" for 2 documents. The run now writes the
/// first row of a key and rejects the others (`duplicate_key`), on the insert and the upsert
/// path alike, and `check` names the key as not unique.
#[tokio::test]
async fn a_key_given_twice_is_rejected_not_overwritten() {
    let w = World::new("check_dup_key").await;
    w.sql(
        "CREATE TABLE t (id int, v text);
         INSERT INTO t VALUES (1, 'first'), (1, 'second'), (2, 'z'), (3, 'x'), (3, 'y'), (3, 'w');",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "t",
        "version = 1\nname = \"t\"\n[source]\ntable = \"t\"\nkey = [\"id\"]\n[[field]]\npath = \"v\"\ncolumn = \"v\"\n",
    );
    let out = w
        .cutover()
        .args(["check", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("not unique"), "{text}");
    for extra in [&[][..], &["--rerun"][..]] {
        let out = w.migrate_with(&pipeline, extra);
        assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
        let report = w.latest_report();
        let e = &report["entities"][0];
        assert_eq!(
            (
                e["read"].as_u64(),
                e["written"].as_u64(),
                e["rejected"].as_u64()
            ),
            (Some(6), Some(3), Some(3)),
            "{report}"
        );
        let run_id = report["run_id"].as_str().unwrap();
        let mut rejects: Vec<(String, String)> =
            w.rejects(run_id).into_iter().map(|r| (r.1, r.3)).collect();
        rejects.sort();
        assert_eq!(
            rejects,
            [
                ("1".to_string(), "duplicate_key".to_string()),
                ("3".to_string(), "duplicate_key".to_string()),
                ("3".to_string(), "duplicate_key".to_string())
            ]
        );
        assert_eq!(w.count("t").await, 3);
    }
    // The message names the key of the row that was written.
    w.sql("CREATE TABLE n (k numeric, v text); INSERT INTO n VALUES (1.0, 'a'), (1.00, 'b');")
        .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "n",
        "version = 1\nname = \"n\"\n[source]\nquery = \"SELECT k, v FROM n ORDER BY v\"\nkey = [\"k\"]\n[[field]]\npath = \"v\"\ncolumn = \"v\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let run_id = w.latest_report()["run_id"].as_str().unwrap().to_string();
    let dir = w.dir.path().join("rejects").join(&run_id);
    let text = std::fs::read_to_string(dir.join("n.csv")).unwrap();
    let kept = w.docs("n").await[0].get_str("v").unwrap().to_string();
    let kept_key = if kept == "a" { "1.0" } else { "1.00" };
    assert!(
        text.contains(&format!("an earlier row has the key {kept_key},")),
        "{text}"
    );
    w.drop().await;
}

/// Found by the thirteenth tester (T6): a query source whose key has NULL parts. The run
/// rejects those rows (rule `id`); check counted NULL as a key value given more than once and
/// blocked. Now check counts them as rejects (exit 2), like the run, single and composite keys.
#[tokio::test]
async fn null_key_parts_are_rejects_for_check_as_for_the_run_not_duplicates() {
    let w = World::new("check_null_key").await;
    w.sql(
        "CREATE TABLE q (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO q SELECT g, g FROM generate_series(1, 3000) g;",
    )
    .await;
    for (name, query, key) in [
        (
            "single",
            "SELECT CASE WHEN id % 1000 = 0 THEN NULL ELSE id END AS id, v FROM q",
            "[\"id\"]",
        ),
        (
            "composite",
            "SELECT id % 2 AS a, CASE WHEN id % 1000 = 0 THEN NULL ELSE id END AS b, v FROM q",
            "[\"a\", \"b\"]",
        ),
    ] {
        let pipeline = common::one_entity_pipeline(
            &w,
            name,
            &format!(
                "version = 1\nname = \"{name}\"\n[source]\nquery = \"{query}\"\nkey = {key}\n\
                 [[field]]\npath = \"v\"\ncolumn = \"v\"\n"
            ),
        );
        let out = w
            .cutover()
            .args(["check", "--pipeline"])
            .arg(&pipeline)
            .output()
            .unwrap();
        let text = common::output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {text}");
        assert!(!text.contains("not unique"), "{name}: {text}");
        let out = w.migrate_with(&pipeline, &[]);
        assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
        let e = &w.latest_report()["entities"][0];
        assert_eq!(e["rejected"], 3, "{name}: {e}");
    }
    w.drop().await;
}

/// Found by the thirteenth tester (T9): check scanned the first 10,000 rows by default and said
/// "check passed" over a table whose rejects came later. It scans every row now; a `--sample`
/// says which rows it left out and never says "passed".
#[tokio::test]
async fn check_scans_every_row_by_default_and_a_sample_says_what_it_left_out() {
    let w = World::new("check_all_rows").await;
    w.sql(
        "CREATE TABLE s (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO s SELECT g, CASE WHEN g > 19990 THEN repeat('x', 30) ELSE 'ok' END
         FROM generate_series(1, 20000) g;",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "s",
        "version = 1\nname = \"s\"\n[source]\ntable = \"s\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"v\"\ncolumn = \"v\"\nvalidate = { max_length = 20 }\n",
    );
    let check = |extra: &[&str]| {
        let out = w
            .cutover()
            .args(["check", "--pipeline"])
            .arg(&pipeline)
            .args(extra)
            .output()
            .unwrap();
        (out.status.code(), common::output_text(&out))
    };
    let (code, text) = check(&[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("10 scanned rows will be rejected"), "{text}");
    let (code, text) = check(&["--sample", "10000"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("check passed"), "{text}");
    assert!(
        text.contains("NOT scanned (--sample): rows of s (10000 of 20000)"),
        "{text}"
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    assert_eq!(w.latest_report()["entities"][0]["rejected"], 10);
    w.drop().await;
}

/// A source table locked by another session (an ALTER in progress) made check and migrate hang
/// without a word: the read now gives up after the lock timeout (60 s, or the source URL's
/// `lock_timeout`), naming the table and the lock.
#[tokio::test]
async fn a_locked_source_table_is_said_not_waited_for_forever() {
    let w = World::new("check_locked").await;
    w.sql("CREATE TABLE jn (id int PRIMARY KEY, v text); INSERT INTO jn VALUES (1, 'a');")
        .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "jn",
        "version = 1\nname = \"jn\"\n[source]\ntable = \"jn\"\nkey = [\"id\"]\n[[field]]\npath = \"v\"\ncolumn = \"v\"\n",
    );
    use sqlx::{Connection, Executor};
    let mut holder = sqlx::PgConnection::connect(&w.pg_url).await.unwrap();
    holder.execute("BEGIN").await.unwrap();
    holder
        .execute("LOCK TABLE jn IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let url = format!("{}?options=-c%20lock_timeout%3D1s", w.pg_url);
    for command in ["check", "migrate"] {
        let out = w
            .cutover()
            .env("CUTOVER_SOURCE_URL", &url)
            .args([command, "--pipeline"])
            .arg(&pipeline)
            .timeout(std::time::Duration::from_secs(50))
            .output()
            .unwrap();
        let text = common::output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{command}: {text}");
        assert!(
            text.contains("another session holds a lock") && text.contains("jn"),
            "{command}: {text}"
        );
    }
    holder.execute("ROLLBACK").await.unwrap();
    assert_eq!(w.count("jn").await, 0);
    w.drop().await;
}

/// A column whose name holds a dot, and a table whose name holds capitals: the read quoted the
/// column as `"v"."a"` (failing with `missing FROM-clause entry`), and check said the capitalised
/// table's primary key had no index.
#[tokio::test]
async fn dotted_column_names_and_capitalised_tables_are_read_as_named() {
    let w = World::new("check_names").await;
    w.sql(
        r#"CREATE TABLE "Up" ("Id" int PRIMARY KEY, "v.a" text);
           INSERT INTO "Up" VALUES (1, 'one'), (2, 'two');"#,
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "up",
        "version = 1\nname = \"up\"\n[source]\ntable = \"Up\"\nkey = [\"Id\"]\n\
         [[field]]\npath = \"va\"\ncolumn = \"v.a\"\n",
    );
    let out = w
        .cutover()
        .args(["check", "--json", "--full", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["entities"][0]["key_indexed"], true, "{report}");
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let docs = w.docs("up").await;
    assert_eq!(docs[0].get_str("va"), Ok("one"), "{docs:?}");
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    w.drop().await;
}

/// A destination collection that cannot hold the documents as they are — a view, a collection
/// with a non-binary collation (keys differing by case are one `_id` there) — blocks check and
/// is refused by migrate before any write; one whose validator refuses every document fails
/// the stage (it "completed" with every row a reject, and verify excused them all), and check
/// warns of the validator.
#[tokio::test]
async fn a_destination_that_cannot_hold_the_documents_is_found_and_refused() {
    let w = World::new("check_dest").await;
    w.sql(
        "CREATE TABLE t (id text PRIMARY KEY, v int);
         INSERT INTO t VALUES ('Abc', 1), ('abc', 2), ('ABC', 3), ('x', 4);",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "t",
        "version = 1\nname = \"t\"\n[source]\ntable = \"t\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"v\"\ncolumn = \"v\"\n",
    );
    let db = w.mongo().await;
    let check = || {
        w.cutover()
            .args(["check", "--pipeline"])
            .arg(&pipeline)
            .output()
            .unwrap()
    };
    // A view.
    db.create_collection("elsewhere").await.unwrap();
    db.create_collection("t")
        .view_on("elsewhere".to_string())
        .pipeline(vec![])
        .await
        .unwrap();
    let out = check();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("BLOCKING: t: `t` is a view"), "{text}");
    let out = w.migrate_with(&pipeline, &[]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("is a view"), "{text}");
    db.collection::<Document>("t").drop().await.unwrap();

    // A case-insensitive collation: 'Abc', 'abc' and 'ABC' would be one _id.
    db.create_collection("t")
        .collation(
            mongodb::options::Collation::builder()
                .locale("en".to_string())
                .strength(mongodb::options::CollationStrength::Secondary)
                .build(),
        )
        .await
        .unwrap();
    let out = check();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("has the collation `en`"), "{text}");
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", common::output_text(&out));
    assert_eq!(
        db.collection::<Document>("t")
            .count_documents(doc! {})
            .await
            .unwrap(),
        0
    );
    db.collection::<Document>("t").drop().await.unwrap();

    // A capped collection: it drops its oldest documents.
    db.create_collection("t")
        .capped(true)
        .size(4096)
        .await
        .unwrap();
    let out = check();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("is a capped collection"), "{text}");
    db.collection::<Document>("t").drop().await.unwrap();

    // A validator no document fits.
    db.create_collection("t")
        .validator(doc! { "$jsonSchema": { "required": ["nowhere"] } })
        .await
        .unwrap();
    let out = check();
    let text = common::output_text(&out);
    assert!(text.contains("target_validator"), "{text}");
    let out = w.migrate_with(&pipeline, &[]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("the target refused every document it was sent (4"),
        "{text}"
    );
    let report = w.latest_report();
    assert_eq!(report["entities"][0]["status"], "failed", "{report}");
    assert_eq!(report["entities"][0]["rejected"], 4, "{report}");
    w.drop().await;
}

/// Found by the eleventh tester (R4): a project writing MongoDB (`[target] default`) that also
/// configures Appwrite. `check` without `--target` checks the target `migrate` writes — it counted
/// Appwrite's rejects (NaN, which an Appwrite column cannot hold) and exited 2 while `migrate`
/// rejected nothing. `check --target appwrite` still finds them.
#[tokio::test]
async fn check_checks_the_target_migrate_would_write() {
    let w = World::new("check_default_target").await;
    w.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v float8 NOT NULL);
           INSERT INTO t SELECT g, CASE WHEN g % 10 = 0 THEN 'NaN'::float8 ELSE g END
           FROM generate_series(1, 100) g;",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "t",
        "version = 1\nname = \"t\"\n[source]\ntable = \"t\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"v\"\ncolumn = \"v\"\n",
    );
    std::fs::write(
        w.dir.path().join("cutover.toml"),
        "[target]\ndefault = \"mongodb\"\n[target.appwrite]\nendpoint = \"http://127.0.0.1:9/v1\"\nproject = \"p\"\ndatabase = \"d\"\n",
    )
    .unwrap();
    let (code, text) = run(&w, "check", &pipeline);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("appwrite_unrepresentable"), "{text}");
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    assert_eq!(w.count("t").await, 100);
    w.drop().await;
}
