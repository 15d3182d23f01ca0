//! Benchmark helper (used by scripts/bench.sh): how fast does mongod alone accept the same documents?
//! Loads a collection cutover wrote into memory as raw BSON, then times unordered bulk inserts of
//! it into an empty collection, batches of N with K in flight — the write ceiling on this machine.
//!
//!   mongo-ceiling URI SOURCE_DB COLLECTION TARGET_DB [BATCH] [IN_FLIGHT]
//!   mongo-ceiling --drop URI DB        (drops a benchmark database)

use std::time::Instant;

use bson::RawDocumentBuf;
use cutover::sink::mongodb::{MongoTarget, WriteMode};
use futures::{StreamExt, TryStreamExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--drop" {
        MongoTarget::connect(&args[2], &args[3])
            .await?
            .database()
            .drop()
            .await?;
        return Ok(());
    }
    if args.len() < 5 {
        anyhow::bail!(
            "usage: mongo-ceiling URI SOURCE_DB COLLECTION TARGET_DB [BATCH] [IN_FLIGHT]"
        );
    }
    let (uri, source_db, coll, target_db) = (&args[1], &args[2], &args[3], &args[4]);
    let batch: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let in_flight: usize = args.get(6).map(|s| s.parse()).transpose()?.unwrap_or(4);

    let source = MongoTarget::connect(uri, source_db).await?;
    let docs: Vec<RawDocumentBuf> = source
        .database()
        .collection::<RawDocumentBuf>(coll)
        .find(bson::doc! {})
        .await?
        .try_collect()
        .await?;
    let bytes: usize = docs.iter().map(|d| d.as_bytes().len()).sum();
    let target = MongoTarget::connect(uri, target_db).await?;
    target
        .database()
        .collection::<RawDocumentBuf>(coll)
        .drop()
        .await?;

    let started = Instant::now();
    let chunks: Vec<&[RawDocumentBuf]> = docs.chunks(batch).collect();
    let written: u64 = futures::stream::iter(chunks)
        .map(|chunk| {
            let target = target.clone();
            async move { target.write(coll, chunk, WriteMode::Insert).await }
        })
        .buffer_unordered(in_flight)
        .map_ok(|r| r.written)
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await?;
    let secs = started.elapsed().as_secs_f64();
    target.database().drop().await?;
    println!(
        "ceiling {coll}: {written} docs ({:.0} bytes each) in {secs:.2}s = {:.0} docs/s (batches of {batch}, {in_flight} in flight)",
        bytes as f64 / docs.len().max(1) as f64,
        written as f64 / secs
    );
    Ok(())
}
