//! A severity per rule against the real servers: in one field, a row breaking the warning rule is
//! written and listed as a warning, a row breaking the error rule is rejected.

mod common;

use common::World;

const SCHEMA: &str = "CREATE TABLE contacts (id int PRIMARY KEY, email text);
INSERT INTO contacts VALUES (1, 'ada@example.org'), (2, 'not-an-address'), (3, NULL);";

const CONTACTS: &str = r#"
version = 1
name = "contacts"
[source]
table = "contacts"
key = ["id"]
[[field]]
path = "email"
column = "email"
validate = { required = true, email = true, severities = { email = "warning" } }
"#;

const PIPELINE: &str = r#"
version = 1
name = "contacts"
mappings_dir = "mappings"
[[stage]]
name = "all"
entities = ["contacts"]
"#;

fn write_files(w: &World) -> std::path::PathBuf {
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/contacts.toml"), CONTACTS).unwrap();
    std::fs::write(dir.join("contacts.toml"), PIPELINE).unwrap();
    dir.join("contacts.toml")
}

#[tokio::test]
async fn a_warning_rule_writes_the_row_and_an_error_rule_of_the_same_field_rejects_it() {
    let w = World::new("rule_severity").await;
    w.sql(SCHEMA).await;
    let pipeline = write_files(&w);

    // check reports each finding with its rule's severity.
    let out = w
        .cutover()
        .args(["check", "--json", "--full", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    // One row will be rejected (the error rule): exit 2.
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut findings: Vec<(String, String, u64)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
                f["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    findings.sort();
    assert_eq!(
        findings,
        [
            ("email".to_string(), "warning".to_string(), 1),
            ("required".to_string(), "reject".to_string(), 1)
        ],
        "{report}"
    );

    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let run_id = w.latest_report()["run_id"].as_str().unwrap().to_string();
    let contacts = |key: &str, stage: &str, rule: &str| {
        vec![(
            "contacts".to_string(),
            key.to_string(),
            stage.to_string(),
            rule.to_string(),
        )]
    };
    assert_eq!(w.rejects(&run_id), contacts("3", "validate", "required"));
    assert_eq!(w.warnings(&run_id), contacts("2", "validate", "email"));
    let run_dir = w.dir.path().join("rejects").join(&run_id);
    assert!(run_dir.join("contacts.csv").is_file());
    assert!(run_dir.join("contacts.warnings.csv").is_file());
    let ids: Vec<i32> = w
        .docs("contacts")
        .await
        .iter()
        .map(|d| d.get_i32("_id").unwrap())
        .collect();
    assert_eq!(
        ids,
        [1, 2],
        "the malformed address is written, the missing one is not"
    );
    w.drop().await;
}

/// A rule that cannot apply to what its field writes is refused when the mapping is compiled
/// (`max` on money, text, an interval, a date or a boolean; `min_length` on a boolean;
/// `not_in_future` on text; `email` on a date): it was accepted and never ran. `not_in_future`
/// applies to each date of an array, and an infinite date written as its text (`infinity`) is in
/// the future — both passed unseen.
#[tokio::test]
async fn rules_that_cannot_apply_are_refused_and_not_in_future_sees_arrays_and_infinity() {
    let w = World::new("rules_apply").await;
    w.sql(
        "CREATE TABLE v (id int PRIMARY KEY, m money, t text, iv interval, d date, b bool, n int);
         INSERT INTO v VALUES (1, 100, '100', '100 days', '2999-01-01', true, 1);
         CREATE TABLE f (id int PRIMARY KEY, d date, da date[]);
         INSERT INTO f VALUES (1, 'infinity', '{2000-01-01}'), (2, '2000-01-01', '{2000-01-01,2999-01-01}'),
           (3, '-infinity', '{}');",
    )
    .await;
    for (column, rule) in [
        ("m", "max = 10"),
        ("t", "max = 10"),
        ("iv", "min = 1"),
        ("d", "max = 10"),
        ("b", "max = 0"),
        ("b", "min_length = 5"),
        ("t", "not_in_future = true"),
        ("d", "email = true"),
        ("n", "regex = \"^1$\""),
    ] {
        let pipeline = common::one_entity_pipeline(
            &w,
            "v",
            &format!(
                "version = 1\nname = \"v\"\n[source]\ntable = \"v\"\nkey = [\"id\"]\n\
                 [[field]]\npath = \"x\"\ncolumn = \"{column}\"\nvalidate = {{ {rule}, severity = \"warning\" }}\n"
            ),
        );
        let out = w
            .cutover()
            .args(["check", "--pipeline"])
            .arg(&pipeline)
            .output()
            .unwrap();
        let text = common::output_text(&out);
        let name = rule.split(' ').next().unwrap();
        assert_eq!(out.status.code(), Some(1), "{column} {rule}: {text}");
        assert!(
            text.contains(&format!("`{name}` cannot apply to this field")),
            "{column} {rule}: {text}"
        );
    }
    // A rule that does apply is taken: a text's length, a number's range.
    let pipeline = common::one_entity_pipeline(
        &w,
        "v",
        "version = 1\nname = \"v\"\n[source]\ntable = \"v\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"t\"\ncolumn = \"t\"\nvalidate = { max_length = 2 }\n\
         [[field]]\npath = \"n\"\ncolumn = \"n\"\nvalidate = { max = 0 }\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));

    let pipeline = common::one_entity_pipeline(
        &w,
        "f",
        "version = 1\nname = \"f\"\n[source]\ntable = \"f\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"d\"\ncolumn = \"d\"\ninfinity = \"string\"\nvalidate = { not_in_future = true }\n\
         [[field]]\npath = \"da\"\ncolumn = \"da\"\nvalidate = { not_in_future = true }\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let run_id = w.latest_report()["run_id"].as_str().unwrap().to_string();
    let mut rejects: Vec<(String, String)> = w
        .rejects(&run_id)
        .into_iter()
        .map(|(_, key, _, rule)| (key, rule))
        .collect();
    rejects.sort();
    let r = |k: &str| (k.to_string(), "not_in_future".to_string());
    assert_eq!(rejects, [r("1"), r("2")]);
    let ids: Vec<i32> = w
        .docs("f")
        .await
        .iter()
        .map(|d| d.get_i32("_id").unwrap())
        .collect();
    assert_eq!(ids, [3], "-infinity is in the past");
    w.drop().await;
}

/// The shapes a field writes besides a plain column: a constant, `split`, `phone`, columns joined
/// (`concat`) or gathered (`array`), and JSON. A rule that cannot apply to what such a field
/// writes is refused by `check` (and `migrate`); on JSON, whose values' kinds only the rows tell,
/// a value the rule cannot judge fails the rule. Oracle for JSON: PostgreSQL's own
/// `jsonb_typeof` and comparison.
#[tokio::test]
async fn rules_on_constants_transforms_combined_columns_and_json_are_refused_or_judged() {
    let w = World::new("rules_shapes").await;
    w.sql(
        "CREATE TABLE q (id int PRIMARY KEY, de text, vc text, n int, js jsonb);
         INSERT INTO q VALUES (1, 'a@b.c', 'x@y.z', 1, '{\"n\": 5}'), (2, 'nope', 'nope', 2, '{}'),
           (3, 'c@d.e', 'e@f.g', 3, '7'), (4, 'f@g.h', 'g@h.i', 4, '\"text\"'),
           (5, 'h@i.j', 'i@j.k', 5, '[8, 9]'), (6, 'j@k.l', 'k@l.m', 6, '5.5'),
           (7, 'l@m.n', 'm@n.o', 7, NULL);",
    )
    .await;
    let mapping = |field: &str| {
        format!(
            "version = 1\nname = \"q\"\n[source]\ntable = \"q\"\nkey = [\"id\"]\n[[field]]\npath = \"x\"\n{field}\n"
        )
    };
    for (field, rule) in [
        ("value = \"x\"\nvalidate = { min = 1 }", "min"),
        (
            "value = \"x\"\nvalidate = { not_in_future = true }",
            "not_in_future",
        ),
        ("value = 5\nvalidate = { email = true }", "email"),
        ("value = [1, 2]\nvalidate = { regex = \"1\" }", "regex"),
        (
            "column = \"de\"\ntransform = [{ split = \"@\" }]\nvalidate = { min = 1 }",
            "min",
        ),
        (
            "column = \"de\"\ntransform = [{ phone = { default_country = \"US\" } }]\nvalidate = { max = 1 }",
            "max",
        ),
        (
            "columns = [\"de\", \"n\"]\ntransform = [\"array\"]\nvalidate = { not_in_future = true }",
            "not_in_future",
        ),
        (
            "columns = [\"de\", \"vc\"]\ntransform = [{ concat = { sep = \" \" } }]\nvalidate = { min = 1 }",
            "min",
        ),
        (
            "column = \"n\"\ntransform = [\"trim\"]\nvalidate = { url = true }",
            "url",
        ),
    ] {
        let pipeline = common::one_entity_pipeline(&w, "q", &mapping(field));
        for command in [&["check"][..], &["migrate", "--dry-run"]] {
            let out = w
                .cutover()
                .args(command)
                .arg("--pipeline")
                .arg(&pipeline)
                .output()
                .unwrap();
            let text = common::output_text(&out);
            assert_ne!(out.status.code(), Some(0), "{command:?} {field}: {text}");
            assert!(
                text.contains(&format!("`{rule}` cannot apply to this field")),
                "{command:?} {field}: {text}"
            );
        }
    }
    // A default the rule cannot judge (the eighteenth tester's F10: written for every NULL,
    // unjudged); one it can judge is taken.
    for (field, refused) in [
        (
            "column = \"n\"\ndefault = \"none\"\nvalidate = { min = 0 }",
            true,
        ),
        ("column = \"n\"\ndefault = 0\nvalidate = { min = 0 }", false),
    ] {
        let pipeline = common::one_entity_pipeline(&w, "q", &mapping(field));
        let out = w
            .cutover()
            .args(["check", "--pipeline"])
            .arg(&pipeline)
            .output()
            .unwrap();
        let text = common::output_text(&out);
        assert_eq!(
            text.contains("`min` cannot apply to the field's default `none`"),
            refused,
            "{field}: {text}"
        );
        assert_eq!(out.status.code() == Some(1), refused, "{field}: {text}");
    }
    // Rules that do apply are taken: an array's length after `split`, the numbers of an array
    // gathered from a text and a number column, the texts of an array.
    for field in [
        "column = \"de\"\ntransform = [{ split = \"@\" }]\nvalidate = { min_length = 2 }",
        "columns = [\"de\", \"n\"]\ntransform = [\"array\"]\nvalidate = { max = 6 }",
        // Text rules judge each text of an array (the eighteenth tester's F11): row 2's `nope`.
        "column = \"de\"\ntransform = [{ split = \",\" }]\nvalidate = { email = true }",
        "columns = [\"de\", \"vc\"]\ntransform = [\"array\"]\nvalidate = { email = true }",
        "columns = [\"de\", \"vc\"]\ntransform = [\"array\"]\nvalidate = { regex = \"@\" }",
    ] {
        let pipeline = common::one_entity_pipeline(&w, "q", &mapping(field));
        let out = w.migrate_with(&pipeline, &["--dry-run"]);
        let text = common::output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{field}: {text}");
        let report = w.latest_report();
        let q = &report["entities"][0];
        assert_eq!(q["rejected"].as_u64(), Some(1), "{field}: {report}");
    }

    // JSON: the rows whose value the rule cannot judge, or judges failing, are rejected; check
    // counts the same rows beforehand.
    let expected: Vec<String> = w
        .query_strings(
            "SELECT id::text FROM q WHERE js IS NOT NULL AND NOT (
               (jsonb_typeof(js) = 'number' AND (js::text)::numeric >= 6)
               OR (jsonb_typeof(js) = 'array' AND NOT EXISTS (
                 SELECT 1 FROM jsonb_array_elements(js) e WHERE jsonb_typeof(e) <> 'null'
                   AND (jsonb_typeof(e) <> 'number' OR (e::text)::numeric < 6)))) ORDER BY id",
        )
        .await;
    assert_eq!(expected, ["1", "2", "4", "6"], "the oracle itself");
    let pipeline = common::one_entity_pipeline(
        &w,
        "q",
        &mapping("column = \"js\"\nvalidate = { min = 6, regex = \"^t\" }"),
    );
    let out = w
        .cutover()
        .args(["check", "--json", "--full", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", common::output_text(&out)));
    // `min` fails 1, 2, 4, 6 (the numbers of row 5's array hold it); `regex` fails every value
    // that is not text (1, 2, 3, 5, 6): six rows.
    assert_eq!(
        report["entities"][0]["rejected_rows"].as_u64(),
        Some(6),
        "{report}"
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let run_id = w.latest_report()["run_id"].as_str().unwrap().to_string();
    let mut by_rule: Vec<(String, String)> = w
        .rejects(&run_id)
        .into_iter()
        .map(|(_, key, _, rule)| (rule, key))
        .collect();
    by_rule.sort();
    by_rule.dedup();
    let min: Vec<&str> = by_rule
        .iter()
        .filter(|(r, _)| r == "min")
        .map(|(_, k)| k.as_str())
        .collect();
    assert_eq!(min, expected);
    let ids: Vec<i32> = w
        .docs("q")
        .await
        .iter()
        .map(|d| d.get_i32("_id").unwrap())
        .collect();
    assert_eq!(ids, [7], "only the NULL is judged by no rule");
    w.drop().await;
}

/// adv34 F5: a row written with a warning in the mapping's eyes but refused by the target (here a
/// validator the team put on the collection) is a reject and nothing else: its warning is not
/// recorded, nor counted, for a row that was never written.
#[tokio::test]
async fn a_row_the_target_refuses_keeps_no_warning() {
    let w = World::new("rule_severity_refused").await;
    w.sql(SCHEMA).await;
    let pipeline = write_files(&w);
    w.mongo()
        .await
        .run_command(bson::doc! {
            "create": "contacts",
            "validator": { "email": { "$regex": "@" } },
        })
        .await
        .unwrap();

    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = w.latest_report();
    let run_id = report["run_id"].as_str().unwrap().to_string();
    let mut rejects = w.rejects(&run_id);
    rejects.sort();
    assert_eq!(rejects.len(), 2, "{rejects:?}");
    assert_eq!(rejects[0].1, "2", "{rejects:?}");
    assert_eq!(rejects[0].2, "write", "{rejects:?}");
    assert_eq!(rejects[1].1, "3", "{rejects:?}");
    assert_eq!(w.warnings(&run_id), Vec::new(), "{report}");
    let e = &report["entities"][0];
    assert_eq!(e["warnings"], 0, "{e}");
    assert_eq!(
        (e["read"].as_u64(), e["written"].as_u64()),
        (Some(3), Some(1)),
        "{e}"
    );
    w.drop().await;
}
