//! The Appwrite writer against the stand-in: idempotent schema set-up, bulk upserts of ≤100 rows,
//! bad rows isolated by halving, retries through injected 429/5xx, a client-side rate limit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use appwrite_standin::{Faults, StandIn};
use cutover::sink::appwrite::AppwriteClient;
use cutover::sink::appwrite::rows::{to_row, upsert_rows};
use serde_json::{Value, json};

const KEY: &str = "writer-test-key";

async fn setup(rate: Option<(u32, u32)>) -> (AppwriteClient, Arc<StandIn>) {
    let mut s = StandIn::new("cutover", KEY);
    s.column_delay = Duration::from_millis(100);
    let s = Arc::new(s);
    let (addr, _) = appwrite_standin::serve(s.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let client = AppwriteClient::new(&format!("http://{addr}/v1"), "cutover", KEY, rate).unwrap();
    (client, s)
}

async fn schema(c: &AppwriteClient) {
    c.ensure_database("registry", "Registry").await.unwrap();
    c.ensure_table("registry", "patients", "patients")
        .await
        .unwrap();
    c.ensure_column(
        "registry",
        "patients",
        "string",
        &json!({ "key": "name", "size": 20, "required": true }),
    )
    .await
    .unwrap();
    c.ensure_column(
        "registry",
        "patients",
        "integer",
        &json!({ "key": "n", "required": false }),
    )
    .await
    .unwrap();
    c.ensure_column(
        "registry",
        "patients",
        "string",
        &json!({ "key": "info", "size": 1000, "required": false }),
    )
    .await
    .unwrap();
    for key in ["name", "n", "info"] {
        c.wait_column("registry", "patients", key, Duration::from_secs(5))
            .await
            .unwrap();
    }
}

fn rows(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| to_row(&bson::doc! { "_id": i as i64, "name": format!("p{i}"), "n": i as i64, "info": { "k": i as i64 } }))
        .collect()
}

#[tokio::test]
async fn schema_set_up_is_idempotent_and_rows_upsert_in_batches_of_100() {
    let (c, s) = setup(None).await;
    schema(&c).await;
    schema(&c).await; // a second set-up finds everything and changes nothing
    let before = c.counters.requests.load(Ordering::Relaxed);
    let failures = upsert_rows(&c, "registry", "patients", &rows(250), 100)
        .await
        .unwrap();
    assert!(failures.is_empty());
    assert_eq!(
        c.counters.requests.load(Ordering::Relaxed) - before,
        3,
        "250 rows in 3 requests"
    );
    assert_eq!(s.row_count("registry", "patients"), 250);
    // A re-run writes the same rows again: nothing duplicated.
    upsert_rows(&c, "registry", "patients", &rows(250), 100)
        .await
        .unwrap();
    assert_eq!(s.row_count("registry", "patients"), 250);
}

#[tokio::test]
async fn a_bad_row_is_isolated_and_the_rest_written() {
    let (c, s) = setup(None).await;
    schema(&c).await;
    let mut batch = rows(100);
    batch[37]["name"] = json!("x".repeat(21)); // longer than the column
    let failures = upsert_rows(&c, "registry", "patients", &batch, 100)
        .await
        .unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].index, 37);
    assert_eq!(failures[0].error.kind(), "row_invalid_structure");
    assert_eq!(s.row_count("registry", "patients"), 99);
}

#[tokio::test]
async fn injected_throttling_and_server_errors_are_retried_until_every_row_is_written_once() {
    let (c, s) = setup(None).await;
    schema(&c).await;
    s.set_faults(Faults {
        rate_limited: 0.1,
        server_error: 0.05,
        unavailable: 0.05,
        delay_ms: 0,
    });
    // 60 requests: with 20% of them failing at random, none failing is a chance of 0.8^60
    // (1.5e-6); with 20 requests it was 1% and happened.
    let failures = upsert_rows(&c, "registry", "patients", &rows(6000), 100)
        .await
        .unwrap();
    s.set_faults(Faults::default());
    assert!(failures.is_empty());
    assert_eq!(s.row_count("registry", "patients"), 6000);
    let retries = c.counters.retries.load(Ordering::Relaxed);
    assert!(
        retries > 0,
        "with 20% of requests failing some must have been retried"
    );
}

#[tokio::test]
async fn the_client_side_rate_limit_is_kept() {
    let (c, _) = setup(Some((20, 1))).await;
    c.ensure_database("registry", "Registry").await.unwrap();
    let started = Instant::now();
    for _ in 0..40 {
        c.call(reqwest::Method::GET, "/tablesdb/registry", None)
            .await
            .unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = 40.0 / secs;
    // Never more than the limit (+10 % for timer granularity); the lower bound only guards
    // against a limiter far stricter than asked (a busy CI machine slows the requests themselves).
    assert!(rate <= 22.0, "{rate:.1} requests/s for a limit of 20/s");
    assert!(
        rate >= 14.0,
        "{rate:.1} requests/s for a limit of 20/s: throttled far below it"
    );
}

#[tokio::test]
async fn users_are_imported_with_their_bcrypt_hash_and_a_rerun_is_not_an_error() {
    use cutover::sink::appwrite::users::{ImportUser, Imported, import_user};
    let (c, s) = setup(None).await;
    let u = ImportUser {
        id: "059b1946-0852-6e7a-96a1-b1fa675af8aa".into(),
        email: "user8@registry.example.org".into(),
        name: "Comfort Doe".into(),
        hash: "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy".into(),
        algorithm: "bcrypt".into(),
        options: json!({}),
        labels: vec!["supervisor".into()],
        prefs: json!({ "department": "EPI" }),
        phone: Some("+231886200424".into()),
        email_verified: Some(true),
        enabled: Some(false),
    };
    assert_eq!(import_user(&c, &u).await.unwrap(), Imported::Created);
    assert_eq!(import_user(&c, &u).await.unwrap(), Imported::Existed);
    let stored = s.get_user(&u.id).unwrap();
    assert_eq!(stored["password"], u.hash);
    assert_eq!(stored["hash"], "bcrypt");
    assert_eq!(stored["labels"], json!(["supervisor"]));
    assert_eq!(stored["prefs"]["department"], "EPI");
    assert_eq!(stored["phone"], "+231886200424");
    assert_eq!(stored["emailVerification"], true);
    assert_eq!(stored["status"], false, "a suspended user is blocked");

    // The hash changed in the source since the last run: the user is re-created with the new one.
    let mut changed = u.clone();
    changed.hash = "$2b$10$abcdefghijklmnopqrstuuJZAgcfl7p92ldGxad68LJZdL17lhWy".into();
    assert_eq!(import_user(&c, &changed).await.unwrap(), Imported::Existed);
    assert_eq!(s.get_user(&u.id).unwrap()["password"], changed.hash);
    assert_eq!(s.users().len(), 1);

    // Another user already holds the email: a 409 the run rejects the row with.
    let mut other = u.clone();
    other.id = "another-user".into();
    let e = import_user(&c, &other).await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");

    // Labels Appwrite refuses are refused (the migrate path keeps only letters and digits).
    let mut bad_label = u.clone();
    bad_label.labels = vec!["data_clerk".into()];
    assert_eq!(
        import_user(&c, &bad_label).await.unwrap_err().status(),
        Some(400)
    );

    let mut bad = u.clone();
    bad.algorithm = "rot13".into();
    assert!(import_user(&c, &bad).await.is_err());

    // Other algorithms go through their own endpoint, options included.
    let mut scrypt = u.clone();
    scrypt.id = "scrypt-user".into();
    scrypt.email = "scrypt@registry.example.org".into();
    scrypt.phone = None;
    scrypt.algorithm = "scrypt".into();
    scrypt.options = json!({ "passwordSalt": "c2FsdA==", "passwordCpu": 16384, "passwordMemory": 8, "passwordParallel": 1, "passwordLength": 64 });
    assert_eq!(import_user(&c, &scrypt).await.unwrap(), Imported::Created);
    let stored = s.get_user("scrypt-user").unwrap();
    assert_eq!(stored["hash"], "scrypt");
    assert_eq!(stored["hashOptions"]["costCpu"], 16384);
}

#[tokio::test]
async fn a_failed_or_slow_column_is_an_error_naming_it() {
    let mut s = StandIn::new("cutover", KEY);
    s.column_delay = Duration::from_millis(50);
    s.failing_columns = vec!["broken".into()];
    let s = Arc::new(s);
    let (addr, _) = appwrite_standin::serve(s.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let c = AppwriteClient::new(&format!("http://{addr}/v1"), "cutover", KEY, None).unwrap();
    c.ensure_database("registry", "Registry").await.unwrap();
    c.ensure_table("registry", "t", "t").await.unwrap();
    for key in ["fine", "broken"] {
        c.ensure_column(
            "registry",
            "t",
            "string",
            &json!({ "key": key, "size": 10, "required": false }),
        )
        .await
        .unwrap();
    }
    c.wait_column("registry", "t", "fine", Duration::from_secs(5))
        .await
        .unwrap();
    let e = c
        .wait_column("registry", "t", "broken", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "column_failed");
    assert!(e.message().contains("t.broken"), "{e}");

    let mut slow = StandIn::new("cutover", KEY);
    slow.column_delay = Duration::from_secs(60);
    let slow = Arc::new(slow);
    let (addr, _) = appwrite_standin::serve(slow, "127.0.0.1:0").await.unwrap();
    let c = AppwriteClient::new(&format!("http://{addr}/v1"), "cutover", KEY, None).unwrap();
    c.ensure_database("registry", "Registry").await.unwrap();
    c.ensure_table("registry", "t", "t").await.unwrap();
    c.ensure_column(
        "registry",
        "t",
        "string",
        &json!({ "key": "late", "size": 10, "required": false }),
    )
    .await
    .unwrap();
    let e = c
        .wait_column("registry", "t", "late", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "column_timeout");
    assert!(e.message().contains("t.late"), "{e}");
}
