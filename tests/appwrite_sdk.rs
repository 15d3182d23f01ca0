//! The official Appwrite Rust SDK (`appwrite` crate) as the client of the stand-in: what the real
//! client sends, the stand-in understands, and what it answers, the real client parses.

use std::sync::Arc;

use appwrite::Client;
use appwrite::services::{TablesDB, Users};
use cutover::standin::StandIn;
use serde_json::json;

#[tokio::test]
async fn the_official_sdk_drives_the_stand_in() {
    cutover::sink::appwrite::install_crypto_provider();
    let mut s = StandIn::new("cutover", "sdk-key");
    s.column_delay = std::time::Duration::from_millis(50);
    let s = Arc::new(s);
    let (addr, _) = cutover::standin::serve(s.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::new()
        .set_endpoint(format!("http://{addr}/v1"))
        .set_project("cutover")
        .set_key("sdk-key");
    let db = TablesDB::new(&client);

    let created = db
        .create("registry", "Registry", None, None, None, None, None)
        .await
        .unwrap();
    assert_eq!(created.id, "registry");
    let table = db
        .create_table(
            "registry", "vaccines", "Vaccines", None, None, None, None, None, None,
        )
        .await
        .unwrap();
    assert_eq!(table.id, "vaccines");
    let col = db
        .create_string_column(
            "registry", "vaccines", "code", 20, true, None, None, None, None,
        )
        .await
        .unwrap();
    assert_eq!(col.key, "code");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let row = db
        .create_row(
            "registry",
            "vaccines",
            "bcg",
            json!({ "code": "BCG" }),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(row.id, "bcg");
    db.upsert_rows(
        "registry",
        "vaccines",
        vec![
            json!({ "$id": "opv", "code": "OPV" }),
            json!({ "$id": "bcg", "code": "BCG1" }),
        ],
        None,
    )
    .await
    .unwrap();
    let got = db
        .get_row("registry", "vaccines", "bcg", None, None)
        .await
        .unwrap();
    assert_eq!(got.id, "bcg");
    let list = db
        .list_rows("registry", "vaccines", None, None, None, None)
        .await
        .unwrap();
    assert_eq!(list.total, 2);
    assert_eq!(s.row_count("registry", "vaccines"), 2);

    // Errors come back as the SDK's error type with Appwrite's code and type.
    let dup = db
        .create_row(
            "registry",
            "vaccines",
            "bcg",
            json!({ "code": "X" }),
            None,
            None,
        )
        .await
        .unwrap_err();
    let text = format!("{dup:?}");
    assert!(
        text.contains("409") && text.contains("row_already_exists"),
        "{text}"
    );

    let users = Users::new(&client);
    let hash = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";
    let u = users
        .create_bcrypt_user("u1", "nurse@example.org", hash, Some("Nurse"))
        .await
        .unwrap();
    assert_eq!(u.id, "u1");
    let u = users.update_labels("u1", ["nurse"]).await.unwrap();
    assert_eq!(u.labels, vec!["nurse".to_string()]);
}
