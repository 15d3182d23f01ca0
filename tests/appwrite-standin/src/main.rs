//! The Appwrite stand-in as a server (see the `appwrite_standin` library), for scripts/services.sh
//! and benchmarks.
//!
//!   appwrite-standin [--listen 127.0.0.1:PORT] [--project ID] [--column-delay-ms N]
//!
//! The API key comes from APPWRITE_API_KEY. Fault injection from the environment:
//! STANDIN_FAULT_429, STANDIN_FAULT_500, STANDIN_FAULT_503 (fractions of requests, e.g. 0.05) and
//! STANDIN_DELAY_MS. Prints `listening on ADDR` once it accepts connections.

use std::sync::Arc;
use std::time::Duration;

use appwrite_standin::{Faults, StandIn};
use clap::Parser;

/// A local stand-in for the Appwrite server API (test infrastructure).
#[derive(Debug, Parser)]
#[command(name = "appwrite-standin")]
struct Args {
    /// The address to listen on (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The project id requests must name in X-Appwrite-Project.
    #[arg(long, default_value = "cutover")]
    project: String,
    /// How long a new column stays `processing`, in milliseconds.
    #[arg(long, default_value_t = 200)]
    column_delay_ms: u64,
}

fn env_f64(name: &str) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // From the environment only, never an argument: a command line is visible to every user.
    let key = std::env::var("APPWRITE_API_KEY")
        .map_err(|_| anyhow::anyhow!("set APPWRITE_API_KEY: the key the stand-in accepts"))?;
    let mut s = StandIn::new(&args.project, &key);
    s.column_delay = Duration::from_millis(args.column_delay_ms);
    s.set_faults(Faults {
        rate_limited: env_f64("STANDIN_FAULT_429"),
        server_error: env_f64("STANDIN_FAULT_500"),
        unavailable: env_f64("STANDIN_FAULT_503"),
        delay_ms: env_f64("STANDIN_DELAY_MS") as u64,
    });
    let (addr, task) = appwrite_standin::serve(Arc::new(s), &args.listen).await?;
    println!("listening on {addr}");
    task.await?;
    Ok(())
}
