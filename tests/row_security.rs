//! A source table with row-level security read by a role its policies filter (the twentieth
//! session's outside tester, adv23 F22): cutover read the 9 rows the policy showed of 30, and
//! scaffold, check, migrate and verify all said success. Every source session runs with
//! `row_security = off`, so such a read fails, saying why and what to do: `check` blocks and
//! `migrate` writes nothing. A URL that asks for the policies (`options=-c row_security=on`)
//! reads what they show, and a role that bypasses them (the superuser here) reads every row.

mod common;

use common::{World, output_text};

const MAPPING: &str = "version = 1\nname = \"s\"\n[source]\ntable = \"s\"\nkey = [\"id\"]\n[[field]]\npath = \"v\"\ncolumn = \"v\"\n";

#[tokio::test]
async fn a_table_whose_policies_hide_rows_is_refused_not_read_in_part() {
    let w = World::new("row_security").await;
    let role = format!("{}_reader", w.mongo_db);
    w.sql(&format!(
        "CREATE TABLE s (id int PRIMARY KEY, v int);
         INSERT INTO s SELECT g, g FROM generate_series(1, 30) g;
         ALTER TABLE s ENABLE ROW LEVEL SECURITY;
         CREATE ROLE {role} LOGIN;
         CREATE POLICY few ON s FOR SELECT TO {role} USING (v < 10);
         GRANT SELECT ON s TO {role};"
    ))
    .await;
    let pipeline = common::one_entity_pipeline(&w, "s", MAPPING);
    let p = pipeline.to_str().unwrap();
    let as_reader = w.pg_url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(as_reader, w.pg_url, "{}", w.pg_url);
    let says = "row-level security";

    let out = w
        .cutover()
        .env("CUTOVER_SOURCE_URL", &as_reader)
        .args(["check", "--pipeline", p])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(says) && text.contains("BYPASSRLS"), "{text}");

    let out = w
        .cutover()
        .env("CUTOVER_SOURCE_URL", &as_reader)
        .args(["migrate", "--quiet", "--pipeline", p])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(says), "{text}");
    assert_eq!(w.count("s").await, 0, "{text}");

    // Asked for in the URL: the rows the policies show, as asked.
    let filtered = format!("{as_reader}?options=-c%20row_security%3Don");
    let out = w
        .cutover()
        .env("CUTOVER_SOURCE_URL", &filtered)
        .args(["migrate", "--quiet", "--pipeline", p])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(w.count("s").await, 9);

    // The superuser bypasses the policies: every row.
    let out = w.migrate_with(&pipeline, &["--rerun"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(w.count("s").await, 30);
    let out = w
        .cutover()
        .args(["verify", "--pipeline", p])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));

    // scaffold as that role: the tables a run could not read are not drafted, each said
    // (adv26 F6: drafted silently, and check then blocked the whole pipeline); the owner of a
    // table that FORCEs row security is held to its policies too.
    let owner = format!("{}_owner", w.mongo_db);
    w.sql(&format!(
        "CREATE TABLE nosel (id int PRIMARY KEY, v int);
         CREATE TABLE open (id int PRIMARY KEY, v int);
         INSERT INTO open VALUES (1, 1);
         GRANT SELECT ON open TO {role};
         CREATE ROLE {owner} LOGIN;
         CREATE TABLE forced (id int PRIMARY KEY, v int);
         INSERT INTO forced VALUES (1, 1), (2, 20);
         ALTER TABLE forced OWNER TO {owner};
         ALTER TABLE forced ENABLE ROW LEVEL SECURITY;
         CREATE POLICY one ON forced USING (v < 10);
         CREATE TABLE owned (id int PRIMARY KEY, v int);
         ALTER TABLE owned OWNER TO {owner};
         ALTER TABLE owned ENABLE ROW LEVEL SECURITY;
         CREATE POLICY one ON owned USING (v < 10);"
    ))
    .await;
    let draft = w.dir.path().join("draft");
    let out = w
        .cutover()
        .env("CUTOVER_SOURCE_URL", &as_reader)
        .args(["scaffold", "--name", "rls", "--out"])
        .arg(&draft)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("`s` is not drafted: row-level security"),
        "{text}"
    );
    assert!(
        text.contains("`nosel` is not drafted: the source role has no SELECT"),
        "{text}"
    );
    assert!(draft.join("mappings/open.toml").exists(), "{text}");
    assert!(!draft.join("mappings/s.toml").exists(), "{text}");
    let drafted = draft.join("pipelines/rls.toml");
    let out = w
        .cutover()
        .env("CUTOVER_SOURCE_URL", &as_reader)
        .args(["check", "--pipeline"])
        .arg(&drafted)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    w.sql("ALTER TABLE forced FORCE ROW LEVEL SECURITY;").await;
    let as_owner = w.pg_url.replacen("postgres@", &format!("{owner}@"), 1);
    let draft = w.dir.path().join("draft_owner");
    let out = w
        .cutover()
        .env("CUTOVER_SOURCE_URL", &as_owner)
        .args(["scaffold", "--name", "rls", "--out"])
        .arg(&draft)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("`forced` is not drafted: row-level security"),
        "{text}"
    );
    assert!(draft.join("mappings/owned.toml").exists(), "{text}");
    let out = w
        .cutover()
        .env("CUTOVER_SOURCE_URL", &as_owner)
        .args(["migrate", "--quiet", "--pipeline"])
        .arg(draft.join("pipelines/rls.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));

    w.sql(&format!(
        "DROP TABLE s, nosel, open, forced, owned; DROP ROLE {role}; DROP ROLE {owner};"
    ))
    .await;
    w.drop().await;
}
