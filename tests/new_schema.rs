//! A schema that is not the registry, migrated by writing mapping files alone.

mod common;

use bson::{Bson, doc};
use common::World;
use cutover::transform::decimal::to_decimal128_bytes;

use common::library::{BOOKS, LOANS, SCHEMA, write_files};

fn d128(s: &str) -> Bson {
    Bson::Decimal128(bson::Decimal128::from_bytes(
        to_decimal128_bytes(s).unwrap(),
    ))
}

#[tokio::test]
async fn another_schema_is_migrated_by_mapping_files_alone() {
    let w = World::new("library").await;
    w.sql(SCHEMA).await;
    let pipeline = write_files(&w);
    // A unique index in the target makes one document fail at write time: only it is rejected.
    w.mongo()
        .await
        .collection::<bson::Document>("catalogue")
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! { "title.main": 1 })
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();

    let out = w.migrate_with(&pipeline, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Authors: text keys as _id, jsonb as an embedded document, NULLs omitted by default.
    let authors = w.docs("authors").await;
    assert_eq!(authors.len(), 3);
    let achebe = authors
        .iter()
        .find(|a| a.get_str("_id") == Ok("achebe"))
        .unwrap();
    assert_eq!(
        achebe.get_document("profile").unwrap(),
        &doc! { "country": "Nigeria", "awards": ["Man Booker International"] }
    );
    let zadie = authors
        .iter()
        .find(|a| a.get_str("_id") == Ok("Zadie"))
        .unwrap();
    assert!(!zadie.contains_key("profile"));

    // Books: 5 rows; one has microseconds (rejected by default), one a numeric that no double holds
    // exactly (rejected), one a duplicate title (rejected by the server at write time).
    let report = w.latest_report();
    let run_id = report["run_id"].as_str().unwrap();
    let mut rules: Vec<(String, String, String)> = w
        .rejects(run_id)
        .into_iter()
        .map(|(e, k, stage, rule)| (e, k, format!("{stage}:{rule}")))
        .collect();
    rules.sort();
    let stages: Vec<&str> = rules.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(rules.len(), 3, "{rules:?}");
    assert!(
        stages.contains(&"transform:timestamp_precision"),
        "{rules:?}"
    );
    assert!(stages.contains(&"transform:lossy_conversion"), "{rules:?}");
    assert!(stages.iter().any(|s| s.starts_with("write:")), "{rules:?}");
    let books = w.docs("catalogue").await;
    assert_eq!(books.len(), 2);
    // Of the two "Things Fall Apart", the first in key order was written, the second refused.
    assert!(
        books
            .iter()
            .any(|b| b.get_str("_id") == Ok("978-0-00-000000-0"))
    );
    let nlae = books
        .iter()
        .find(|b| b.get_str("_id") == Ok("978-0-14-118693-6"))
        .unwrap();
    assert_eq!(
        nlae.get("price"),
        Some(&d128("9999999999.9999")),
        "numeric is exact"
    );
    assert_eq!(nlae.get_str("author"), Ok("achebe"));
    assert_eq!(
        nlae.get_document("title").unwrap(),
        &doc! { "main": "No Longer at Ease", "full": "No Longer at Ease: Second novel" }
    );
    assert_eq!(nlae.get_array("tags").unwrap(), &Vec::<Bson>::new());
    assert_eq!(nlae.get_i64("pages"), Ok(194));
    assert_eq!(nlae.get_str("format"), Ok("hardcover"));
    assert_eq!(nlae.get_str("source"), Ok("legacy-library"));
    assert_eq!(nlae.get_f64("weightKg"), Ok(0.3));
    assert_eq!(nlae.get_array("chapters").unwrap().len(), 0);

    // Loans: a composite key becomes a sub-document _id; references encode like the book's _id.
    let loans = w.docs("loans").await;
    assert_eq!(loans.len(), 3);
    assert_eq!(
        loans[0]
            .get_document("_id")
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["book_isbn", "member_id"]
    );
    assert!(loans.iter().all(|l| l.get_str("book").is_ok()));
    w.drop().await;
}

#[tokio::test]
async fn embedded_children_and_time_zones_convert_exactly() {
    let w = World::new("library2").await;
    w.sql(SCHEMA).await;
    // Remove the rows rejected above so this test looks at the successful shapes only.
    w.sql("DELETE FROM books WHERE isbn IN ('978-0-00-720028-3', '978-0-00-000000-0'); UPDATE books SET weight = 0.125 WHERE isbn = '978-0-241-14419-0'; UPDATE books SET added = '2020-01-01 00:00:00.123+00' WHERE isbn = '978-0-385-47454-2'").await;
    let pipeline = write_files(&w);
    let out = w
        .cutover()
        .args(["migrate", "--quiet", "--batch-size", "1", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let books = w.docs("catalogue").await;
    let tfa = books
        .iter()
        .find(|b| b.get_str("_id") == Ok("978-0-385-47454-2"))
        .unwrap();
    // Children ordered by n, whatever the insert order.
    assert_eq!(
        tfa.get_array("chapters").unwrap(),
        &vec![
            Bson::Document(doc! { "n": 1, "title": "One" }),
            Bson::Document(doc! { "n": 2, "title": "Two" })
        ]
    );
    // timestamp without time zone, declared +01:00: 10:00 local is 09:00 UTC.
    assert_eq!(
        tfa.get_datetime("published").unwrap().timestamp_millis(),
        chrono::DateTime::parse_from_rfc3339("1958-06-01T09:00:00Z")
            .unwrap()
            .timestamp_millis()
    );
    // Milliseconds survive.
    assert_eq!(
        tfa.get_datetime("added").unwrap().timestamp_millis() % 1000,
        123
    );
    assert_eq!(tfa.get("price"), Some(&d128("12.5000")));
    assert_eq!(
        tfa.get_array("tags").unwrap(),
        &vec![Bson::String("classic".into()), Bson::String("novel".into())]
    );
    let wt = books
        .iter()
        .find(|b| b.get_str("_id") == Ok("978-0-241-14419-0"))
        .unwrap();
    assert_eq!(wt.get_array("chapters").unwrap().len(), 1);
    assert!(!wt.contains_key("tags") || wt.get_array("tags").unwrap().is_empty());
    w.drop().await;
}

#[tokio::test]
async fn a_mapping_with_a_typo_is_refused_naming_file_and_key() {
    let w = World::new("typo").await;
    w.sql(SCHEMA).await;
    let pipeline = write_files(&w);
    std::fs::write(
        w.dir.path().join("mappings/loans.toml"),
        LOANS.replace("column = \"loaned_at\"", "colunm = \"loaned_at\""),
    )
    .unwrap();
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("loans.toml") && err.contains("colunm"),
        "{err}"
    );

    // A column that does not exist is named too, before anything is written.
    std::fs::write(
        w.dir.path().join("mappings/loans.toml"),
        LOANS.replace("column = \"loaned_at\"", "column = \"loaned_on\""),
    )
    .unwrap();
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loaned_on"), "{err}");
    let data: Vec<String> = w
        .mongo()
        .await
        .list_collection_names()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| !n.starts_with("cutover_"))
        .collect();
    assert!(data.is_empty(), "nothing written: {data:?}");

    // A timestamp without time zone and no `timezone` is refused before the run, naming it.
    std::fs::write(w.dir.path().join("mappings/loans.toml"), LOANS).unwrap();
    std::fs::write(
        w.dir.path().join("mappings/books.toml"),
        BOOKS.replace("timezone = \"+01:00\"\n", ""),
    )
    .unwrap();
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("books.toml") && err.contains("`published`") && err.contains("timezone"),
        "{err}"
    );
    w.drop().await;
}
