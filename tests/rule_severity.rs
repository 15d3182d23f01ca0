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
