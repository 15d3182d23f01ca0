//! `cutover check` against the real servers: lists the sample registry's lossy and invalid data
//! with counts, and blocks on what would break a run.

mod common;

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
    assert_eq!(
        out.status.code(),
        Some(0),
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
            .all(|e| e["key_unique"] == true && e["estimated_ms"].is_u64())
    );
    let names = w.mongo().await.list_collection_names().await.unwrap();
    assert!(names.is_empty(), "check wrote {names:?}");

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
