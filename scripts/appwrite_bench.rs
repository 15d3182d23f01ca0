//! Benchmark helper (scripts/bench.sh): rows/s into the Appwrite stand-in with bulk upserts (100
//! rows a request) versus single-row writes, for the registry's mapped patient documents.
//!
//! An example of cutover, not a product binary, because it runs the stand-in (a dev-dependency) in
//! this process: `cargo build --release --example appwrite-bench`, then
//! `target/release/examples/appwrite-bench`.
//!
//!   appwrite-bench PIPELINE ENTITY ROWS
//!
//! Reads ROWS rows of ENTITY from $CUTOVER_SOURCE_URL, maps them with the pipeline's mapping,
//! starts the stand-in in this process on 127.0.0.1, creates a table whose columns follow the
//! first row, and times both write paths through cutover's Appwrite writer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use appwrite_standin::StandIn;
use cutover::pipeline::Pipeline;
use cutover::sink::appwrite::AppwriteClient;
use cutover::sink::appwrite::rows::{to_row, upsert_rows};
use cutover::source::SourceSession;
use futures::TryStreamExt;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        anyhow::bail!("usage: appwrite-bench PIPELINE ENTITY ROWS");
    }
    let (pipeline_path, entity, n): (&str, &str, usize) = (&args[1], &args[2], args[3].parse()?);
    let url = std::env::var("CUTOVER_SOURCE_URL")?;
    let pipeline = Pipeline::load(
        std::path::Path::new(pipeline_path),
        std::path::Path::new("mappings"),
    )?;
    let steps = pipeline.select(&[entity.to_string()])?;
    let mut session = SourceSession::open(&url).await?;
    let plans = cutover::pipeline::run::compile_plans(&pipeline, &steps, &mut session).await?;
    let plan = &plans[0];
    let ctx = cutover::transform::row::MapContext {
        now_ms: chrono::Utc::now().timestamp_millis(),
        ..Default::default()
    };
    let no_children: Vec<Vec<Vec<cutover::source::Value>>> =
        plan.embeds.iter().map(|_| Vec::new()).collect();
    let mut rows: Vec<Value> = Vec::with_capacity(n);
    {
        let mut conn = session.reader().await?;
        let mut stream = cutover::source::postgres::stream(&mut conn, &plan.read);
        while let Some(row) = stream.try_next().await? {
            let Ok(row) = row else { continue };
            let mapped = cutover::transform::row::map_row(plan, &row, &no_children, &ctx);
            if let Some(doc) = mapped.doc {
                rows.push(to_row(&doc.to_document()?));
            }
            if rows.len() >= n {
                break;
            }
        }
    }
    session.close().await;

    let key = "bench-key";
    let mut s = StandIn::new("cutover", key);
    s.column_delay = Duration::from_millis(10);
    let s = Arc::new(s);
    let (addr, _) = appwrite_standin::serve(s.clone(), "127.0.0.1:0").await?;
    let client = AppwriteClient::new(&format!("http://{addr}/v1"), "cutover", key, None)?;
    client.ensure_database("bench", "bench").await?;
    for table in ["bulk", "single"] {
        client.ensure_table("bench", table, table).await?;
        for (k, v) in rows[0].as_object().into_iter().flatten() {
            if k.starts_with('$') {
                continue;
            }
            let (kind, body) = match v {
                Value::Bool(_) => ("boolean", json!({ "key": k, "required": false })),
                Value::Number(x) if x.is_f64() => ("float", json!({ "key": k, "required": false })),
                Value::Number(_) => ("integer", json!({ "key": k, "required": false })),
                Value::Array(_) => (
                    "string",
                    json!({ "key": k, "size": 1000, "required": false, "array": true }),
                ),
                _ => (
                    "string",
                    json!({ "key": k, "size": 100_000, "required": false }),
                ),
            };
            client.ensure_column("bench", table, kind, &body).await?;
            client
                .wait_column("bench", table, k, Duration::from_secs(10))
                .await?;
        }
    }

    let started = Instant::now();
    let failures = upsert_rows(&client, "bench", "bulk", &rows, 100).await?;
    let bulk = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut single_failures = 0;
    for r in &rows {
        let id = r["$id"].as_str().unwrap_or_default().to_string();
        let mut data = r.clone();
        if let Some(o) = data.as_object_mut() {
            o.remove("$id");
        }
        let path = format!("/tablesdb/bench/tables/single/rows/{id}");
        if client
            .call(reqwest::Method::PUT, &path, Some(&json!({ "data": data })))
            .await
            .is_err()
        {
            single_failures += 1;
        }
    }
    let single = started.elapsed().as_secs_f64();
    println!(
        "appwrite stand-in, {} {entity} rows: bulk upserts (100/request) {:.0} rows/s ({} failed); single-row writes {:.0} rows/s ({} failed); {:.1}x",
        rows.len(),
        rows.len() as f64 / bulk,
        failures.len(),
        rows.len() as f64 / single,
        single_failures,
        single / bulk
    );
    Ok(())
}
