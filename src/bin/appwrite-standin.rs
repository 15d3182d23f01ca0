//! The Appwrite stand-in as a server (see `cutover::standin`), for scripts/services.sh and
//! benchmarks.
//!
//!   appwrite-standin [--listen 127.0.0.1:PORT] [--project ID] [--column-delay-ms N]
//!
//! The API key comes from APPWRITE_API_KEY. Fault injection from the environment:
//! STANDIN_FAULT_429, STANDIN_FAULT_500, STANDIN_FAULT_503 (fractions of requests, e.g. 0.05) and
//! STANDIN_DELAY_MS. Prints `listening on ADDR` once it accepts connections.

use std::sync::Arc;

use cutover::standin::{Faults, StandIn};

fn env_f64(name: &str) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut project = "cutover".to_string();
    let mut delay_ms = 200u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "--project" => project = args.next().unwrap_or(project),
            "--column-delay-ms" => {
                delay_ms = args.next().and_then(|v| v.parse().ok()).unwrap_or(delay_ms)
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let key = std::env::var("APPWRITE_API_KEY")
        .map_err(|_| anyhow::anyhow!("set APPWRITE_API_KEY: the key the stand-in accepts"))?;
    let mut s = StandIn::new(&project, &key);
    s.column_delay = std::time::Duration::from_millis(delay_ms);
    s.set_faults(Faults {
        rate_limited: env_f64("STANDIN_FAULT_429"),
        server_error: env_f64("STANDIN_FAULT_500"),
        unavailable: env_f64("STANDIN_FAULT_503"),
        delay_ms: env_f64("STANDIN_DELAY_MS") as u64,
    });
    let (addr, task) = cutover::standin::serve(Arc::new(s), &listen).await?;
    println!("listening on {addr}");
    task.await?;
    Ok(())
}
