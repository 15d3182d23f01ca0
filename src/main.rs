//! The `cutover` binary: parse the command line, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

// Row mapping allocates many small strings and documents; mimalloc halves the allocator's share of
// the client's CPU, which on a shared box is CPU taken from mongod (measured with scripts/bench.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The stack of each runtime thread (see `main`).
const STACK_BYTES: usize = 64 * 1024 * 1024;

fn main() -> ExitCode {
    // A command line clap cannot read ran nothing: exit 1 as any error before a run, not clap's
    // 2, which here means "finished with rejected rows" (adv42 F1). Help and version exit 0.
    let cli = match cutover::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() { 1 } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    if let Err(err) = cutover::commands::init_logging(&cli) {
        cutover::errln!("error: {err:#}");
        return ExitCode::from(1);
    }
    // Documents nest up to MongoDB's 180 levels, and their conversions (extended JSON, JSON
    // text for Appwrite, comparison in verify) recurse once a level: a 2 MiB worker stack
    // overflowed on one 160 levels deep (the eighteenth tester's F3). The stack is reserved,
    // not committed, so a larger one costs only what a deep document uses.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(STACK_BYTES)
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            cutover::errln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let result = cutover::commands::run(cli).await;
        cutover::sink::mongodb::shutdown_all().await;
        result
    });
    match result {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(err) => {
            cutover::errln!(
                "error: {}",
                cutover::redact::redact_text(&format!("{err:#}"))
            );
            ExitCode::from(1)
        }
    }
}
