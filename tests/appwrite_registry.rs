//! The registry's documents as Appwrite tables: schemas derived from the mappings are accepted by
//! the stand-in, and every migrated document becomes a row that fits them.

mod common;

use std::sync::Arc;
use std::time::Duration;

use appwrite_standin::StandIn;
use common::World;
use cutover::pipeline::Pipeline;
use cutover::sink::appwrite::AppwriteClient;
use cutover::sink::appwrite::rows::upsert_rows;
use cutover::sink::appwrite::schema::{Kind, apply, table_spec, to_row};
use cutover::source::SourceSession;

#[tokio::test]
async fn every_registry_table_fits_its_derived_appwrite_schema() {
    let w = World::new("aw_registry").await;
    w.load_registry(100);
    assert_eq!(w.migrate(&[]).status.code(), Some(2));

    let root = common::repo();
    let pipeline = Pipeline::load(
        &root.join("pipelines/registry.toml"),
        &root.join("mappings"),
    )
    .unwrap();
    let steps = pipeline.select(&[]).unwrap();
    let mut session = SourceSession::open(&w.pg_url).await.unwrap();
    let plans = cutover::pipeline::run::compile_plans(&pipeline, &steps, &mut session)
        .await
        .unwrap();
    session.close().await;

    let mut s = StandIn::new("cutover", "k");
    s.column_delay = Duration::from_millis(20);
    let s = Arc::new(s);
    let (addr, _) = appwrite_standin::serve(s.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let client = AppwriteClient::new(&format!("http://{addr}/v1"), "cutover", "k", None).unwrap();

    for plan in &plans {
        let spec = table_spec(plan);
        apply(&client, "registry", &spec, Duration::from_secs(10))
            .await
            .unwrap();
        let docs = w.docs(&plan.collection).await;
        let rows: Vec<serde_json::Value> = docs.iter().map(|d| to_row(d, &spec)).collect();
        let failures = upsert_rows(&client, "registry", &spec.id, &rows, 100)
            .await
            .unwrap();
        assert!(
            failures.is_empty(),
            "{}: {:?}",
            plan.entity,
            failures
                .iter()
                .map(|f| (&rows[f.index], &f.error))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            s.row_count("registry", &spec.id),
            docs.len(),
            "{}",
            plan.entity
        );
    }

    let patients = plans.iter().find(|p| p.entity == "patients").unwrap();
    let spec = table_spec(patients);
    let kind = |k: &str| spec.columns.iter().find(|c| c.key == k).unwrap().clone();
    assert_eq!(kind("guardians").kind, Kind::Json);
    assert_eq!(kind("contactInfo").kind, Kind::Json);
    assert_eq!(kind("birthDate").kind, Kind::Datetime);
    assert_eq!(kind("facilityId").kind, Kind::Text(36));
    assert!(kind("medicalInfo").kind == Kind::Json);
    let firstname = kind("firstName");
    assert_eq!(
        firstname.kind,
        Kind::Text(100),
        "max_length of the mapping sizes the column"
    );
    let users = plans.iter().find(|p| p.entity == "users").unwrap();
    let uspec = table_spec(users);
    let roles = uspec.columns.iter().find(|c| c.key == "roles").unwrap();
    assert!(roles.array, "scalar embeds become array columns");
    w.drop().await;
}
