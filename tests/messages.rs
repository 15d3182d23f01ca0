//! What a rejected row's line says (the twentieth session's outside tester adv24, F4 and F6): a
//! number too long for Decimal128 is shown by its head, tail and length, not whole (a 6,146-digit
//! value filled a finding), and a value BSON cannot hold (a JSON key with a NUL byte) names its
//! field's path.

mod common;

use common::{World, output_text};

#[tokio::test]
async fn a_rejected_rows_line_names_its_field_and_shortens_a_long_number() {
    let w = World::new("messages").await;
    w.sql(
        r#"CREATE TABLE t (id int PRIMARY KEY, n numeric, js json);
           INSERT INTO t VALUES (1, 1e6145, '{}'), (2, 1, '{"a\u0000b": 1}'), (3, 2, '{}');"#,
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "t",
        "version = 1\nname = \"t\"\n[source]\ntable = \"t\"\nkey = [\"id\"]\n[[field]]\npath = \"n\"\ncolumn = \"n\"\n[[field]]\npath = \"js\"\ncolumn = \"js\"\n",
    );
    let check = w
        .cutover()
        .args(["check", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let text = output_text(&check);
    assert!(text.contains("decimal_precision"), "{text}");
    assert!(
        text.lines().all(|l| l.chars().count() < 2000),
        "a line of the check is as long as the number:\n{}",
        &text[..text.len().min(4000)]
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert_eq!(w.count("t").await, 1);
    let report = w.latest_report();
    let run_id = report["run_id"].as_str().unwrap();
    let dir = w.dir.path().join("rejects").join(run_id);
    let mut lines = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !name.ends_with(".csv") || name.ends_with(".warnings.csv") {
            continue;
        }
        let mut r = csv::Reader::from_path(&path).unwrap();
        let headers = r.headers().unwrap().clone();
        for rec in r.records() {
            let rec = rec.unwrap();
            let get = |k: &str| {
                headers
                    .iter()
                    .position(|h| h == k)
                    .and_then(|i| rec.get(i))
                    .unwrap_or_default()
                    .to_string()
            };
            lines.push((get("rule"), get("path"), get("message")));
        }
    }
    lines.sort();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (rule, path, message) = &lines[0];
    assert_eq!((rule.as_str(), path.as_str()), ("bson", "js"), "{lines:?}");
    assert!(message.contains("NUL byte"), "{lines:?}");
    let (rule, path, message) = &lines[1];
    assert_eq!(
        (rule.as_str(), path.as_str()),
        ("decimal_precision", "n"),
        "{lines:?}"
    );
    assert!(
        message.contains("(6146 characters)") && message.len() < 400,
        "{message}"
    );
    w.drop().await;
}

/// adv39 F10: `history --limit 0` showed a run, `--status bogus` an empty table: both are
/// refused before anything is asked of a server, naming what is allowed.
/// A command line clap cannot read ran nothing: exit 1 (an error before a run), never 2, which
/// means "finished, some rows rejected" (`verify`: "the target differs") — adv42 F1.
#[test]
fn history_refuses_a_limit_below_one_and_an_unknown_status() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("cutover"))
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), output_text(&out))
    };
    let (code, text) = run(&["history", "--limit", "0"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("--limit"), "{text}");
    let (code, text) = run(&["history", "--status", "bogus"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("interrupted"), "{text}");
    for args in [
        &["migrate", "--bogus"][..],
        &["migrate", "--dry-run", "--batch-size", "-1"],
        &["verify", "--sample", "abc"],
        &["frobnicate"],
        &[],
    ] {
        let (code, text) = run(args);
        assert_eq!(code, Some(1), "{args:?}: {text}");
        assert!(text.contains("error"), "{args:?}: {text}");
    }
    for args in [&["--help"][..], &["migrate", "--help"], &["--version"]] {
        let (code, text) = run(args);
        assert_eq!(code, Some(0), "{args:?}: {text}");
    }
}
