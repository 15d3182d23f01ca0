//! A checkpoint stores a key as text that the resumed read binds as `CAST($n AS type)`: for every
//! key type and its edges (BC dates, years past 9999, bytea, NaN and infinities, quotes…),
//! PostgreSQL itself must read that text back as the same value, and the resumed read must start
//! exactly after it — also where a query source's key has NULL parts.
//!
//! The oracle is PostgreSQL: the keys are decoded by cutover's reader, turned into checkpoint text
//! by cutover, and then PostgreSQL counts the rows equal to and after that text.

mod common;

use common::World;
use futures::TryStreamExt;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use cutover::source::postgres::{self, ReadSpec};
use cutover::source::value::{Value, key_literals};

/// (type, values as SQL literals), each value distinct; NULL is not a key of a table.
const TYPES: &[(&str, &[&str])] = &[
    (
        "date",
        &[
            "'4713-01-01 BC'",
            "'0045-03-15 BC'",
            "'0001-12-31 BC'",
            "'0001-01-01'",
            "'2024-02-29'",
            "'9999-12-31'",
            "'10000-01-01'",
            "'262142-12-31'",
        ],
    ),
    (
        "timestamp",
        &[
            "'4713-01-01 00:00:00 BC'",
            "'0001-12-31 23:59:59.999999 BC'",
            "'0001-01-01 00:00:00'",
            "'2024-03-10 02:30:00.000001'",
            "'10000-01-01 00:00:00.5'",
        ],
    ),
    (
        "timestamptz",
        &[
            "'0045-03-15 12:00:00+00 BC'",
            "'1969-12-31 23:59:59.999999+00'",
            "'2024-03-10 02:30:00.123456-08'",
            "'12345-06-07 08:09:10+00'",
        ],
    ),
    (
        "bytea",
        &[
            "''::bytea",
            "'\\x00'",
            "'\\x00ff'",
            "'\\x5c27'",
            "'\\xffffffff'",
        ],
    ),
    (
        "real",
        &[
            "'-Infinity'",
            "'-3.4028235e38'",
            "'-0.1'",
            "'1e-45'",
            "'0.1'",
            "'21.35'",
            "'16777217'",
            "'Infinity'",
            "'NaN'",
        ],
    ),
    (
        "double precision",
        &[
            "'-Infinity'",
            "'-1.7976931348623157e308'",
            "'5e-324'",
            "'0.1'",
            "'0.30000000000000004'",
            "'9007199254740993'",
            "'1e300'",
            "'Infinity'",
            "'NaN'",
        ],
    ),
    (
        "numeric",
        &[
            "'-123456789012345678901234567890.000000001'",
            "'-1'",
            "'0.000'",
            "'1.50'",
            "'1e40'",
            "'NaN'",
        ],
    ),
    (
        "text",
        &[
            "''",
            "' '",
            "'a''b'",
            "'back\\slash'",
            "E'tab\\tnew\\nline'",
            "'Zoë'",
            "'日本語'",
            "'🎉'",
            "'$k0'",
            "'$k0$'",
            "'a$$b'",
        ],
    ),
    (
        "character(3)",
        &["E'\\t'", "''", "E'a\\t'", "'a'", "'a b'", "'b'"],
    ),
    (
        "uuid",
        &[
            "'00000000-0000-0000-0000-000000000000'",
            "'7fffffff-ffff-ffff-ffff-ffffffffffff'",
            "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
        ],
    ),
    (
        "bigint",
        &["-9223372036854775808", "-1", "0", "9223372036854775807"],
    ),
    ("integer", &["-2147483648", "2147483647"]),
    ("smallint", &["-32768", "32767"]),
    ("boolean", &["false", "true"]),
];

/// Rows as their debug text: `NaN` equals itself there.
async fn read_all(c: &mut PgConnection, spec: &ReadSpec) -> Vec<String> {
    read_values(c, spec)
        .await
        .iter()
        .map(|r| format!("{r:?}"))
        .collect()
}

/// The rows of `spec`, read both ways the reader has (bound parameters, and `COPY` with the key
/// written in as literals): they must agree.
async fn read_values(c: &mut PgConnection, spec: &ReadSpec) -> Vec<Vec<Value>> {
    let rows = |r: Vec<postgres::DecodedRow>| -> Vec<Vec<Value>> {
        r.into_iter()
            .map(|r| r.expect("every edge value decodes"))
            .collect()
    };
    let fetched = rows(postgres::stream(c, spec).try_collect().await.unwrap());
    let copied = rows(postgres::copy_stream(c, spec).try_collect().await.unwrap());
    assert_eq!(
        format!("{fetched:?}"),
        format!("{copied:?}"),
        "{}",
        spec.sql_inline()
    );
    fetched
}

#[tokio::test]
async fn every_key_type_reads_back_and_resumes_exactly_after_its_checkpoint_text() {
    let w = World::new("checkpoint_keys").await;
    let mut c = PgConnection::connect(&w.pg_url).await.unwrap();
    for (n, (ty, values)) in TYPES.iter().enumerate() {
        let table = format!("k{n}");
        let rows: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("(CAST({v} AS {ty}), {i})"))
            .collect();
        w.sql(&format!(
            "CREATE TABLE {table} (k {ty} PRIMARY KEY, i int NOT NULL); INSERT INTO {table} VALUES {};",
            rows.join(", ")
        ))
        .await;
        let cols = postgres::describe(&mut c, &format!("\"{table}\""))
            .await
            .unwrap();
        let spec =
            ReadSpec::new(&format!("\"{table}\""), &cols, &["i".into()], &["k".into()]).unwrap();
        let rows = read_values(&mut c, &spec).await;
        let all = read_all(&mut c, &spec).await;
        assert_eq!(all.len(), values.len(), "{ty}");
        for (pos, row) in rows.iter().enumerate() {
            let text = key_literals(&[&row[0]]).expect("a full key");
            // PostgreSQL reads the text back as exactly this row's value…
            let same: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT count(*) FROM {table} WHERE k = CAST($1 AS {}) AND i = $2",
                // sqlx names char(n) `CHAR`, which as a cast means char(1).
                if cols[0].is_padded() {
                    "bpchar"
                } else {
                    cols[0].pg_type.as_str()
                }
            )))
            .bind(&text[0])
            .bind(row[1].to_string().parse::<i32>().unwrap())
            .fetch_one(&mut c)
            .await
            .unwrap_or_else(|e| {
                panic!("{ty}: PostgreSQL refuses the checkpoint text {text:?}: {e}")
            });
            assert_eq!(same, 1, "{ty}: {text:?} is not the value of row {pos}");
            // …and a read resumed after it returns exactly the rows after this one.
            let mut resumed = spec.clone();
            resumed.after = Some(text.clone());
            let rest = read_all(&mut c, &resumed).await;
            assert_eq!(
                rest,
                all[pos + 1..].to_vec(),
                "{ty}: resumed after {text:?}"
            );
        }
    }
    let _ = c.close().await;
    w.drop().await;
}

#[tokio::test]
async fn a_query_source_key_with_null_parts_resumes_without_losing_or_repeating_rows() {
    let w = World::new("checkpoint_null_keys").await;
    w.sql(
        "CREATE TABLE t (a int, b text, n int NOT NULL);
         INSERT INTO t SELECT CASE WHEN g % 4 = 0 THEN NULL ELSE g % 5 END,
                              CASE WHEN g % 3 = 0 THEN NULL ELSE 'b' || (g % 7) END, g
         FROM generate_series(1, 60) g;",
    )
    .await;
    let mut c = PgConnection::connect(&w.pg_url).await.unwrap();
    let rel = postgres::relation_sql(None, Some("SELECT a, b, n FROM t"));
    let cols = postgres::describe(&mut c, &rel).await.unwrap();
    assert!(
        cols.iter().all(|c| c.nullable),
        "a query's columns may be NULL"
    );
    let spec = ReadSpec::new(&rel, &cols, &[], &["a".into(), "b".into(), "n".into()]).unwrap();
    let rows = read_values(&mut c, &spec).await;
    let all = read_all(&mut c, &spec).await;
    assert_eq!(all.len(), 60);
    let mut checked = 0;
    for (pos, row) in rows.iter().enumerate() {
        let key: Vec<&Value> = row.iter().collect();
        let Some(text) = key_literals(&key) else {
            continue; // no checkpoint is taken at a key with a NULL part
        };
        let mut resumed = spec.clone();
        resumed.after = Some(text.clone());
        let rest = read_all(&mut c, &resumed).await;
        assert_eq!(rest, all[pos + 1..].to_vec(), "resumed after {text:?}");
        checked += 1;
    }
    assert!(checked > 10 && checked < 60, "{checked} full keys");
    // The table's own NOT NULL columns are known as such (their row comparison keeps the index).
    let cols = postgres::describe(&mut c, "\"t\"").await.unwrap();
    let nullable: Vec<bool> = cols.iter().map(|c| c.nullable).collect();
    assert_eq!(nullable, [true, true, false]);
    let _ = c.close().await;
    w.drop().await;
}
