//! The subcommands, one file each, and what they share: configuration, logging, the target
//! and its ledger. `crate::cli` holds only the clap types they are given.

use anyhow::Result;

use crate::cli::{Cli, Command, Outcome};

mod backup;
mod changes;
mod check;
mod docs;
mod history;
mod lock;
pub(crate) mod migrate;
mod plan;
pub(crate) mod report;
mod rollback;
mod scaffold;
mod schema;
pub(crate) mod shared;
mod status;
mod verify;

use backup::backup;
use changes::changes;
use check::check;
use docs::docs;
use history::history;
use lock::lock;
use migrate::migrate;
use plan::plan;
use report::report;
use rollback::rollback;
use scaffold::scaffold;
use schema::schema;
pub use shared::init_logging;
use status::status;
use verify::verify;

pub async fn run(cli: Cli) -> Result<Outcome> {
    match &cli.command {
        Command::Migrate(args) => migrate(&cli, args).await,
        Command::Plan(args) => plan(&cli, args).await,
        Command::Scaffold(args) => scaffold(&cli, args).await,
        Command::Docs(args) => docs(&cli, args).await,
        Command::Check(args) => check(&cli, args).await,
        Command::Report(args) => report(&cli, args).await,
        Command::Verify(args) => verify(&cli, args).await,
        Command::Status(args) => status(&cli, args).await,
        Command::History(args) => history(&cli, args).await,
        Command::Rollback(args) => rollback(&cli, args).await,
        Command::Lock(cmd) => lock(&cli, cmd).await,
        Command::Backup(cmd) => backup(&cli, cmd).await,
        Command::Schema(cmd) => schema(&cli, cmd).await,
        Command::Changes(cmd) => changes(&cli, cmd).await,
        Command::Serve(args) => crate::serve::serve(&cli, args).await,
    }
}
