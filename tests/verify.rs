//! `cutover verify` against the real servers: a clean migration verifies; a deleted, a changed and
//! a stray document are named exactly; dangling references are found.

mod common;

use bson::{Document, doc};
use common::World;

fn verify(w: &World, args: &[&str]) -> (Option<i32>, String, serde_json::Value) {
    let out_path = w.dir.path().join("verify.json");
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(common::repo().join("pipelines/registry.toml"))
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

#[tokio::test]
async fn verify_passes_after_a_clean_run_and_names_exactly_what_differs() {
    let w = World::new("verify").await;
    w.load_registry(120);
    assert_eq!(w.migrate(&[]).status.code(), Some(2));
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(json["ok"], true);
    let p = json["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entity"] == "patients")
        .unwrap();
    let guardians = w.pg_count("guardians").await;
    assert_eq!(p["embedded"][0]["path"], "guardians");
    assert_eq!(p["embedded"][0]["source_children"], guardians);
    assert_eq!(p["embedded"][0]["target_elements"], guardians);
    for e in json["entities"].as_array().unwrap() {
        assert_eq!(e["ok"], true, "{e}");
        assert!(
            text.contains(&format!(
                "{:<24} full comparison",
                e["entity"].as_str().unwrap()
            )),
            "{text}"
        );
    }

    let db = w.mongo().await;
    let patients = db.collection::<Document>("patients");
    let all = w.docs("patients").await;
    let (gone, changed) = (&all[3], &all[7]);
    patients
        .delete_one(doc! { "_id": gone.get("_id").unwrap().clone() })
        .await
        .unwrap();
    patients
        .update_one(
            doc! { "_id": changed.get("_id").unwrap().clone() },
            doc! { "$set": { "contactInfo.address.city": "Nowhere" } },
        )
        .await
        .unwrap();
    patients
        .insert_one(doc! { "_id": "stray-doc", "firstName": "Nobody" })
        .await
        .unwrap();

    let (code, text, json) = verify(&w, &["patients", "immunizations"]);
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(json["ok"], false);
    let p = &json["entities"][0];
    assert_eq!(
        p["missing"],
        serde_json::json!([gone.get_str("patientId").unwrap()]),
        "{p}"
    );
    assert_eq!(p["unexpected"], serde_json::json!(["stray-doc"]));
    assert_eq!(p["different"].as_array().unwrap().len(), 1);
    assert_eq!(
        p["different"][0]["key"],
        changed.get_str("patientId").unwrap()
    );
    assert_eq!(
        p["different"][0]["fields"],
        serde_json::json!(["contactInfo.address.city"])
    );
    assert!(text.contains("contactInfo.address.city"), "{text}");
    // The deleted patient's immunizations now point nowhere.
    let i = &json["entities"][1];
    let broken = i["broken_references"].as_array().unwrap();
    assert_eq!(broken.len(), 1, "{i}");
    assert_eq!(broken[0]["path"], "patientId");
    assert_eq!(broken[0]["examples"][0], gone.get_str("patientId").unwrap());

    // A sample still finds the changed document when it is sampled, and says it sampled.
    let (_, text, json) = verify(&w, &["patients", "--sample", "5"]);
    assert!(
        json["entities"][0]["mode"]
            .as_str()
            .unwrap()
            .starts_with("sample"),
        "{text}"
    );
    w.drop().await;
}
