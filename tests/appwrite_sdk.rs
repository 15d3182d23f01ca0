//! The official Appwrite Rust SDK (`appwrite` crate) as the client of the stand-in: what the real
//! client sends, the stand-in understands, and what it answers, the real client parses.

use std::sync::Arc;

use appwrite::Client;
use appwrite::query::Query;
use appwrite::services::{TablesDB, Users};
use appwrite_standin::StandIn;
use serde_json::json;

#[tokio::test]
async fn the_official_sdk_drives_the_stand_in() {
    cutover::sink::appwrite::install_crypto_provider();
    let mut s = StandIn::new("cutover", "sdk-key");
    s.column_delay = std::time::Duration::from_millis(50);
    let s = Arc::new(s);
    let (addr, _) = appwrite_standin::serve(s.clone(), "127.0.0.1:0")
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

/// A stand-in with fast columns and the SDK client of it.
async fn sdk_and_standin() -> (Client, Arc<StandIn>) {
    cutover::sink::appwrite::install_crypto_provider();
    let mut s = StandIn::new("cutover", "sdk-key");
    s.column_delay = std::time::Duration::from_millis(20);
    let s = Arc::new(s);
    let (addr, _) = appwrite_standin::serve(s.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::new()
        .set_endpoint(format!("http://{addr}/v1"))
        .set_project("cutover")
        .set_key("sdk-key");
    (client, s)
}

/// Issue #11: the stand-in answered 405 to `GET /tablesdb/{db}/tables` and ignored
/// `Query.offset`. The official SDK lists databases, tables, columns, indexes and rows (paged
/// with `limit` and `offset`) and reads one database and one table.
#[tokio::test]
async fn the_official_sdk_lists_databases_tables_columns_indexes_and_rows_with_offset() {
    let (client, _s) = sdk_and_standin().await;
    let db = TablesDB::new(&client);
    for id in ["alpha", "beta", "gamma"] {
        db.create(id, id, None, None, None, None, None)
            .await
            .unwrap();
    }
    for t in ["t1", "t2", "t3", "t4"] {
        db.create_table("alpha", t, t, None, None, None, None, None, None)
            .await
            .unwrap();
    }
    for key in ["a", "b", "c"] {
        db.create_string_column("alpha", "t1", key, 20, false, None, None, None, None)
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    db.create_index(
        "alpha",
        "t1",
        "by_a",
        appwrite::enums::TablesDBIndexType::Key,
        ["a"],
        None,
        None,
        None,
    )
    .await
    .unwrap();
    db.create_index(
        "alpha",
        "t1",
        "by_b",
        appwrite::enums::TablesDBIndexType::Unique,
        ["b"],
        None,
        None,
        None,
    )
    .await
    .unwrap();
    let rows: Vec<serde_json::Value> = (0..30)
        .map(|i| json!({ "$id": format!("r{i:02}"), "a": format!("v{i}") }))
        .collect();
    db.upsert_rows("alpha", "t1", rows, None).await.unwrap();

    let q = |v: Vec<Query>| Some(v.into_iter().map(|q| q.to_string()).collect::<Vec<_>>());

    let dbs = db.list(None, None, None).await.unwrap();
    assert_eq!(dbs.total, 3);
    let ids: Vec<&str> = dbs.databases.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["alpha", "beta", "gamma"]);
    let dbs = db
        .list(q(vec![Query::limit(1), Query::offset(1)]), None, None)
        .await
        .unwrap();
    assert_eq!((dbs.total, dbs.databases[0].id.as_str()), (3, "beta"));
    assert_eq!(db.get("gamma").await.unwrap().id, "gamma");

    let tables = db.list_tables("alpha", None, None, None).await.unwrap();
    assert_eq!(tables.total, 4);
    let tables = db
        .list_tables("alpha", q(vec![Query::offset(2)]), None, None)
        .await
        .unwrap();
    let ids: Vec<&str> = tables.tables.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["t3", "t4"]);
    let t1 = db.get_table("alpha", "t1").await.unwrap();
    assert_eq!((t1.id.as_str(), t1.database_id.as_str()), ("t1", "alpha"));

    let columns = db.list_columns("alpha", "t1", None, None).await.unwrap();
    assert_eq!(columns.total, 3);
    let keys: Vec<&str> = columns
        .columns
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["a", "b", "c"]);
    let columns = db
        .list_columns(
            "alpha",
            "t1",
            q(vec![Query::limit(1), Query::offset(2)]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(columns.columns.len(), 1);
    assert_eq!(columns.columns[0]["key"], "c");

    let indexes = db.list_indexes("alpha", "t1", None, None).await.unwrap();
    assert_eq!(indexes.total, 2);
    let keys: Vec<&str> = indexes.indexes.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["by_a", "by_b"]);

    // Rows: the default page is 25; `offset` skips, `limit` bounds, `total` counts all.
    let page = db
        .list_rows("alpha", "t1", None, None, None, None)
        .await
        .unwrap();
    assert_eq!((page.total, page.rows.len()), (30, 25));
    let page = db
        .list_rows(
            "alpha",
            "t1",
            q(vec![Query::limit(10), Query::offset(25)]),
            None,
            None,
            None,
        )
        .await
        .unwrap();
    let ids: Vec<&str> = page.rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["r25", "r26", "r27", "r28", "r29"]);
    assert_eq!(page.total, 30);
    let page = db
        .list_rows(
            "alpha",
            "t1",
            q(vec![Query::limit(3), Query::offset(10)]),
            None,
            None,
            None,
        )
        .await
        .unwrap();
    let ids: Vec<&str> = page.rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["r10", "r11", "r12"]);
}

/// Issue #11: the stand-in stored some doubles one ulp off (its JSON parser rounded). Written and
/// read back with the official SDK, each double keeps its bits.
#[tokio::test]
async fn a_double_round_trips_bit_exactly_through_the_stand_in() {
    let (client, s) = sdk_and_standin().await;
    let db = TablesDB::new(&client);
    db.create("exact", "exact", None, None, None, None, None)
        .await
        .unwrap();
    db.create_table("exact", "nums", "nums", None, None, None, None, None, None)
        .await
        .unwrap();
    db.create_float_column("exact", "nums", "x", true, None, None, None, None, None)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    let values: [f64; 5] = [
        6.086303267103942e139,
        0.1 + 0.2,
        5e-324,
        1.7976931348623157e308,
        2.2250738585072014e-308,
    ];
    for (i, x) in values.iter().enumerate() {
        let id = format!("n{i}");
        // The text the SDK sends is the shortest that round-trips.
        assert_eq!(x.to_string().parse::<f64>().unwrap().to_bits(), x.to_bits());
        db.create_row("exact", "nums", &id, json!({ "x": x }), None, None)
            .await
            .unwrap();
        let stored = s
            .rows("exact", "nums")
            .into_iter()
            .find(|r| r["$id"] == id.as_str())
            .unwrap();
        assert_eq!(
            stored["x"].as_f64().unwrap().to_bits(),
            x.to_bits(),
            "stored {} for {x:e}",
            stored["x"]
        );
        let got = db.get_row("exact", "nums", &id, None, None).await.unwrap();
        assert_eq!(
            got.data["x"].as_f64().unwrap().to_bits(),
            x.to_bits(),
            "{x:e}"
        );
    }
}
