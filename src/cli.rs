//! The command line: every clap type (doc comments are the help text) and the dispatch to the
//! modules that do the work. Only commands that work are listed.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, Overrides, ProcessEnv};
use crate::ledger::Ledger;
use crate::pipeline::Pipeline;
use crate::pipeline::run::{self, RunOptions};
use crate::sink::appwrite::AppwriteClient;
use crate::sink::mongodb::MongoTarget;
use crate::sink::retry::RetryPolicy;
use crate::sink::target::{AppwriteTarget, Target};
use crate::source::SourceSession;

/// Move an application's data out of PostgreSQL into MongoDB or Appwrite for a one-time cutover.
///
/// Exit status: 0 success, 1 error, 2 finished but with rejected or failed rows.
#[derive(Debug, Parser)]
#[command(name = "cutover", version, about, long_about = None)]
pub struct Cli {
    /// Config file (default: ./cutover.toml when it exists).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Log level (error, warn, info, debug, trace) or a tracing filter; RUST_LOG also works.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate the pipeline's stages (all, or the named stages/entities) into the target.
    Migrate(MigrateArgs),
    /// Print what `migrate` would run, in which order, from which mapping.
    Plan(PlanArgs),
    /// Pre-flight: connectivity, every mapping against the live source, and a scan of the data for
    /// conversions that would lose information or reject rows. Writes nothing.
    Check(CheckArgs),
    /// The sign-off report of a run (default: the latest) joined with its verification.
    Report(ReportArgs),
    /// Compare the target with the source: re-derive every expected document with the mappings and
    /// compare by _id; list missing, unexpected and different documents; check references.
    Verify(VerifyArgs),
    /// Show every stage's state in the target: applied, pending, failed, interrupted (with its
    /// checkpoint), rolled back, or changed since applied; and who holds the lock.
    Status(StatusArgs),
    /// List past runs.
    History(HistoryArgs),
    /// Undo stages: by default every stage of the last run, newest first.
    Rollback(RollbackArgs),
    /// Inspect or release the lock that keeps two runs apart.
    #[command(subcommand)]
    Lock(LockCommand),
    /// Backups taken before a stage wrote into a non-empty collection.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Appwrite tables derived from the mappings: show them, or create them ahead of a run.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Versioned changes to the target after the cutover (MongoDB): numbered change files with
    /// up and down operations, applied under the run lock and recorded in the ledger.
    #[command(subcommand)]
    Changes(ChangesCommand),
}

#[derive(Debug, Subcommand)]
pub enum ChangesCommand {
    /// Write the next version's change file, commented, ready to edit.
    New(ChangesNewArgs),
    /// Apply pending changes in version order (one batch); a failed change is undone and stops
    /// the batch (unless --continue-on-error).
    Up(ChangesUpArgs),
    /// Reverse applied changes, the last applied first (default: one).
    Down(ChangesDownArgs),
    /// Each change's state: applied, pending, failed, rolled back, modified since applied, out
    /// of order, non-reversible; and who holds the lock.
    Status(ChangesListArgs),
    /// Every change file with its version, name, operations and state.
    List(ChangesListArgs),
    /// Every up and down of a change, newest first.
    History(ChangesHistoryArgs),
}

#[derive(Debug, Args)]
pub struct ChangesHistoryArgs {
    #[command(flatten)]
    pub target: ChangesTargetArgs,
    /// How many entries to show.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Skip this many of the newest entries first.
    #[arg(long, default_value_t = 0)]
    pub skip: usize,
    /// Only entries with this status (applied, failed, restore-failed, rolled-back).
    #[arg(long)]
    pub status: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Where the change files are and which target they change.
#[derive(Debug, Args)]
pub struct ChangesTargetArgs {
    /// Directory of change files.
    #[arg(long, value_name = "DIR", default_value = "pipelines/changes")]
    pub dir: PathBuf,
    /// Target (changes support MongoDB only).
    #[arg(long, value_enum, default_value_t = ChangesTarget::Mongodb)]
    pub target: ChangesTarget,
    /// Target database (overrides CUTOVER_MONGODB_DATABASE and the config).
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChangesTarget {
    Mongodb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChangeTemplate {
    Empty,
    AddField,
    RenameField,
    Index,
    Seed,
}

#[derive(Debug, Args)]
pub struct ChangesNewArgs {
    /// What the change does, in a few words (the file name's slug).
    pub name: String,
    /// The operation the new file starts with.
    #[arg(long, value_enum, default_value_t = ChangeTemplate::Empty)]
    pub template: ChangeTemplate,
    /// Directory of change files.
    #[arg(long, value_name = "DIR", default_value = "pipelines/changes")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ChangesUpArgs {
    #[command(flatten)]
    pub target: ChangesTargetArgs,
    /// Apply pending changes up to this version (included).
    #[arg(long, value_name = "VERSION")]
    pub to: Option<u64>,
    /// Report per operation what would change (matching documents, indexes); write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply pending changes older than the newest applied one.
    #[arg(long)]
    pub allow_out_of_order: bool,
    /// After a failed change (undone), go on with the next instead of stopping.
    #[arg(long)]
    pub continue_on_error: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ChangesDownArgs {
    /// Reverse this one applied change (refused when a change applied after it works on the
    /// same collections).
    #[arg(value_name = "VERSION", conflicts_with_all = ["steps", "to"])]
    pub version: Option<u64>,
    #[command(flatten)]
    pub target: ChangesTargetArgs,
    /// Reverse the last N applied changes.
    #[arg(long, value_name = "N", conflicts_with = "to")]
    pub steps: Option<usize>,
    /// Reverse every applied change after this version (it stays applied).
    #[arg(long, value_name = "VERSION")]
    pub to: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ChangesListArgs {
    #[command(flatten)]
    pub target: ChangesTargetArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Print each table's columns (type, size, array) and indexes, as `apply` would create them.
    Show(SchemaArgs),
    /// Create the database, tables, columns and indexes in Appwrite (idempotent; waits until
    /// every column and index is available).
    Apply(SchemaArgs),
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Stages or entities (default: all).
    pub names: Vec<String>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Target (only appwrite has a schema to set up).
    #[arg(long, value_enum, default_value_t = TargetKind::Appwrite)]
    pub target: TargetKind,
}

/// Which target the ledger commands read.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Target (default: target.default from the config, else mongodb).
    #[arg(long, value_enum)]
    pub target: Option<TargetKind>,
    /// Target database: MongoDB's (overrides CUTOVER_MONGODB_DATABASE and the config) or
    /// Appwrite's (overrides APPWRITE_DATABASE and the config).
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run id (the file name in the reports directory; default: the latest run that ran a stage,
    /// dry runs passed over).
    pub run_id: Option<String>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    /// Write to this file instead of standard output.
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Md,
    Html,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Stages or entities (default: all).
    pub names: Vec<String>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Rows scanned per entity.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        conflicts_with = "full"
    )]
    pub sample: u64,
    /// Scan every row.
    #[arg(long)]
    pub full: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 even when rows will be rejected (otherwise: exit 2, like `migrate`).
    #[arg(long)]
    pub allow_rejects: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Stages or entities (default: all).
    pub names: Vec<String>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Compare about N documents per entity instead of all.
    #[arg(long, value_name = "N", conflicts_with = "full")]
    pub sample: Option<u64>,
    /// Compare every document, whatever the size (default: all up to 1,000,000 rows, then a
    /// sample of 100,000).
    #[arg(long)]
    pub full: bool,
    /// Where to write the JSON result (default: reports/verify-<time>.json).
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Print the JSON result instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// How many runs to show, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    /// Only runs with this status (completed, completed_with_rejects, failed, running).
    #[arg(long)]
    pub status: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Stages or entities to roll back (their latest applied step).
    pub names: Vec<String>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Roll back the last N applied steps.
    #[arg(long, value_name = "N", conflicts_with_all = ["names", "all"])]
    pub steps: Option<usize>,
    /// Roll back every applied step.
    #[arg(long, conflicts_with = "names")]
    pub all: bool,
    /// Also roll back the stages that depend on those named.
    #[arg(long)]
    pub cascade: bool,
    /// Print what would be undone; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Who holds the lock, since when, until when.
    Status(TargetArgs),
    /// Remove the lock whoever holds it (only when its holder is known to be dead).
    Release {
        #[command(flatten)]
        target: TargetArgs,
        /// Required: releasing a live run's lock lets a second run start beside it.
        #[arg(long)]
        confirm: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// List backups.
    List(TargetArgs),
    /// Put a backup back into its collection (replacing the collection's documents).
    Restore {
        name: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Delete a backup.
    Drop {
        name: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Keep the newest N backups of each collection and drop the rest (data and record); a
    /// backup `cutover rollback` would restore is always kept.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Backups kept per collection, newest first (besides those rollback needs).
    #[arg(long, value_name = "N")]
    pub keep: usize,
    /// Only the backups of this entity (repeatable; default: every entity).
    #[arg(long, value_name = "ENTITY")]
    pub entity: Vec<String>,
    /// Print what would be dropped; drop nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// Where the pipeline and mappings are.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Pipeline file (default: run.pipeline from the config, else pipelines/registry.toml).
    #[arg(long, value_name = "PATH")]
    pub pipeline: Option<PathBuf>,

    /// Mappings directory (default: the pipeline's mappings_dir, else run.mappings_dir, else mappings).
    #[arg(long, value_name = "DIR")]
    pub mappings: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Stages or entities to run (default: all, in pipeline order).
    pub names: Vec<String>,

    #[command(flatten)]
    pub pipeline: PipelineArgs,

    /// Read, transform and validate everything; write nothing to the target.
    #[arg(long)]
    pub dry_run: bool,

    /// Documents per write batch.
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,

    /// Write batches in flight.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,

    /// Record failed batches as rejects and go on (default: stop at the first failed batch).
    #[arg(long)]
    pub continue_on_error: bool,

    /// Skip validation rules (type conversions still apply).
    #[arg(long)]
    pub skip_validation: bool,

    /// Stop the run once more than N rows have been rejected.
    #[arg(long, value_name = "N")]
    pub max_rejects: Option<u64>,

    /// Run even when stages this selection depends on have not been migrated.
    #[arg(long)]
    pub ignore_dependencies: bool,

    /// Where to write the JSON report (default: reports/<run-id>.json).
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,

    #[command(flatten)]
    pub target: TargetArgs,

    /// Appwrite: at most N requests per second (default: no client-side limit; the server's 429
    /// answers are always honoured).
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<u32>,

    /// Appwrite: requests allowed at once above the rate limit (default: 1).
    #[arg(long, value_name = "N", requires = "rate_limit")]
    pub burst: Option<u32>,

    /// Appwrite: rows per bulk request (at most 100).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub bulk_rows: usize,

    /// Hide progress bars.
    #[arg(long, short)]
    pub quiet: bool,

    /// Retries of a failed batch before it counts as failed.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retries: u32,

    /// Run the selected stages again even when the ledger says they are applied.
    #[arg(long)]
    pub rerun: bool,

    /// A mapping changed after its stage was applied: keep the data and record the new mapping.
    #[arg(long)]
    pub accept_changed: bool,

    /// Start interrupted stages over instead of resuming from their checkpoint.
    #[arg(long)]
    pub fresh: bool,

    /// Copy only rows changed (by the mapping's `source.updated_at`) since the snapshot of each
    /// stage's last completed run: the short catch-up in the maintenance window.
    #[arg(long)]
    pub since_last: bool,

    /// Also delete target documents whose source rows no longer exist (prints how many; with
    /// --dry-run only counts them).
    #[arg(long)]
    pub sync_deletes: bool,

    /// Do not back up a non-empty collection before writing into it (rollback then cannot restore it).
    #[arg(long)]
    pub no_backup: bool,

    /// When a stage fails, put its collection back as it was before the stage.
    #[arg(long)]
    pub restore_on_failure: bool,

    /// Lock expiry in seconds, renewed while the run lives.
    #[arg(long, value_name = "SECONDS", default_value_t = 1800)]
    pub lock_ttl: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    Mongodb,
    Appwrite,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Stages or entities (default: all).
    pub names: Vec<String>,

    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

/// The exit status when the reader of our output has gone: what a shell reports for a program
/// killed by SIGPIPE (128 + 13).
pub const EXIT_BROKEN_PIPE: i32 = 141;

/// Writes command output. When the reader has gone (`cutover verify | head -1`) the process ends
/// quietly with [`EXIT_BROKEN_PIPE`] instead of panicking as `println!` does; any other write
/// failure ends it with status 1.
pub fn write_out(to_stderr: bool, args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let result = if to_stderr {
        std::io::stderr().lock().write_fmt(args)
    } else {
        std::io::stdout().lock().write_fmt(args)
    };
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(EXIT_BROKEN_PIPE)
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot write the output: {e}");
            std::process::exit(1)
        }
    }
}

/// `print!` to standard output through [`write_out`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_out(false, format_args!($($arg)*))
    };
}

/// `println!` to standard output through [`write_out`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::write_out(false, format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_out(false, format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` through [`write_out`].
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::write_out(true, format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// How a command ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed,
    FinishedWithRejects,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Failed => 1,
            Outcome::FinishedWithRejects => 2,
        }
    }
}

/// An error and its causes as one line, `a: b: c`, leaving out a cause whose text the line already
/// holds (many errors here print their source themselves). A driver error (sqlx, MongoDB) ends the
/// line: its readable text is what the errors wrapping it print, and its own `Display` and causes
/// carry PostgreSQL source lines, byte counts and raw BSON.
pub fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let (t, last) = if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            (crate::source::postgres::error_text(e), true)
        } else if let Some(e) = cause.downcast_ref::<mongodb::error::Error>() {
            (crate::sink::mongodb::error_text(e), true)
        } else {
            (cause.to_string(), false)
        };
        if !text.contains(&t) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&t);
        }
        if last {
            break;
        }
    }
    text
}

/// A bare level (`debug`) applies to cutover's own logs; the libraries under it (drivers, HTTP,
/// TLS) stay at `warn` so their chatter does not bury the run's phases. A filter with directives
/// (`cutover=debug,sqlx=info`) is taken as written.
fn level_filter(level: &str) -> String {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let l = level.trim().to_ascii_lowercase();
    if LEVELS.contains(&l.as_str()) {
        match l.as_str() {
            "off" | "error" => l,
            _ => format!("warn,cutover={l}"),
        }
    } else {
        level.to_string()
    }
}

pub fn init_logging(cli: &Cli) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match &cli.log_level {
        Some(l) => EnvFilter::try_new(level_filter(l))
            .with_context(|| format!("invalid --log-level `{l}`"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| crate::redact::RedactingWriter(std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}

fn load_config(cli: &Cli, o: Overrides) -> Result<Config> {
    let cfg = Config::load(cli.config.as_deref(), &ProcessEnv, &o)?;
    cfg.register_secrets();
    Ok(cfg)
}

fn load_pipeline(cfg: &Config, args: &PipelineArgs) -> Result<Pipeline> {
    let path = args
        .pipeline
        .clone()
        .unwrap_or_else(|| cfg.pipeline.clone());
    let mut p = Pipeline::load(&path, &cfg.mappings_dir)?;
    if let Some(dir) = &args.mappings {
        let set = crate::mapping::MappingSet::load_dir(dir)?;
        p = Pipeline::new(&path, p.spec, set)?;
    }
    Ok(p)
}

pub async fn run(cli: Cli) -> Result<Outcome> {
    match &cli.command {
        Command::Migrate(args) => migrate(&cli, args).await,
        Command::Plan(args) => plan(&cli, args).await,
        Command::Check(args) => crate::commands::check(&cli, args).await,
        Command::Report(args) => crate::commands::report(&cli, args).await,
        Command::Verify(args) => crate::commands::verify(&cli, args).await,
        Command::Status(args) => crate::commands::status(&cli, args).await,
        Command::History(args) => crate::commands::history(&cli, args).await,
        Command::Rollback(args) => crate::commands::rollback(&cli, args).await,
        Command::Lock(cmd) => crate::commands::lock(&cli, cmd).await,
        Command::Backup(cmd) => crate::commands::backup(&cli, cmd).await,
        Command::Schema(cmd) => schema(&cli, cmd).await,
        Command::Changes(cmd) => crate::commands::changes(&cli, cmd).await,
    }
}

/// How to reach an Appwrite target beyond the config.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AppwriteTuning {
    pub rate: Option<(u32, u32)>,
    pub bulk_rows: usize,
    pub retries: Option<u32>,
}

/// The target `--target` names (else the config's default), its ledger and a name to show.
pub(crate) async fn connect_target(
    cfg: &Config,
    kind: Option<TargetKind>,
    tuning: AppwriteTuning,
) -> Result<(Target, Ledger, String)> {
    let kind = match kind {
        Some(k) => k,
        None if cfg.default_target == "appwrite" => TargetKind::Appwrite,
        None => TargetKind::Mongodb,
    };
    match kind {
        TargetKind::Mongodb => {
            let mongo = cfg.require_mongodb()?;
            let t = MongoTarget::connect(&mongo.uri, &mongo.database).await?;
            let target = Target::Mongo(t);
            let ledger = Ledger::new(target.store(), &mongo.ledger_prefix);
            let name = target.display_name();
            Ok((target, ledger, name))
        }
        TargetKind::Appwrite => {
            let a = cfg.require_appwrite()?;
            let mut client = AppwriteClient::new(
                &a.endpoint,
                &a.project,
                a.api_key.as_deref().unwrap_or_default(),
                tuning.rate,
            )?;
            if let Some(r) = tuning.retries {
                client.policy.max_retries = r;
            }
            let bulk = if tuning.bulk_rows == 0 {
                crate::sink::appwrite::rows::MAX_BULK_ROWS
            } else {
                tuning.bulk_rows
            };
            let target = Target::Appwrite(AppwriteTarget::new(client, &a.database, bulk));
            let ledger = Ledger::new(target.store(), "cutover_");
            let name = target.display_name();
            Ok((target, ledger, name))
        }
    }
}

/// The target and its ledger, for the ledger commands.
pub(crate) async fn open_ledger(
    cli: &Cli,
    target: &TargetArgs,
) -> Result<(Config, Target, Ledger)> {
    open_ledger_for(cli, target, None).await
}

/// The target (`--target`, else the pipeline's `target`, else the config's default) and its
/// ledger, for commands that read a pipeline.
pub(crate) async fn open_ledger_for(
    cli: &Cli,
    target: &TargetArgs,
    pipeline: Option<&PipelineArgs>,
) -> Result<(Config, Target, Ledger)> {
    let cfg = load_config(
        cli,
        Overrides {
            mongodb_database: target.database.clone(),
            appwrite_database: target.database.clone(),
            ..Default::default()
        },
    )?;
    let kind = match (target.target, pipeline) {
        (Some(k), _) => Some(k),
        (None, Some(args)) => pipeline_target(&load_pipeline(&cfg, args)?),
        (None, None) => None,
    };
    let (t, ledger, _) = connect_target(&cfg, kind, AppwriteTuning::default()).await?;
    Ok((cfg, t, ledger))
}

/// The target a pipeline file names, if any.
pub(crate) fn pipeline_target(p: &Pipeline) -> Option<TargetKind> {
    p.spec.target.map(|t| match t {
        crate::pipeline::PipelineTarget::Mongodb => TargetKind::Mongodb,
        crate::pipeline::PipelineTarget::Appwrite => TargetKind::Appwrite,
    })
}

pub(crate) fn pipeline_for(cfg: &Config, args: &PipelineArgs) -> Result<Pipeline> {
    load_pipeline(cfg, args)
}

async fn migrate(cli: &Cli, args: &MigrateArgs) -> Result<Outcome> {
    let cfg = load_config(
        cli,
        Overrides {
            batch_size: args.batch_size,
            concurrency: args.concurrency,
            mongodb_database: args.target.database.clone(),
            appwrite_database: args.target.database.clone(),
            ..Default::default()
        },
    )?;
    for line in cfg.describe_effective() {
        crate::errln!("{line}");
    }
    let pipeline = load_pipeline(&cfg, &args.pipeline)?;
    let steps = pipeline.select(&args.names)?;
    let source = cfg.require_source()?.to_string();
    // --target, else the pipeline's own, else the config's default.
    let kind = args.target.target.or(pipeline_target(&pipeline));
    let (target, ledger, target_name) = connect_target(
        &cfg,
        kind,
        AppwriteTuning {
            rate: args.rate_limit.map(|r| (r, args.burst.unwrap_or(1))),
            bulk_rows: args.bulk_rows,
            retries: Some(args.retries),
        },
    )
    .await?;
    let opts = RunOptions {
        dry_run: args.dry_run,
        batch_size: cfg.batch_size,
        batch_bytes: cfg.batch_bytes,
        concurrency: cfg.concurrency,
        continue_on_error: args.continue_on_error,
        skip_validation: args.skip_validation,
        max_rejects: args.max_rejects,
        ignore_dependencies: args.ignore_dependencies,
        report_path: args.report.clone(),
        reports_dir: cfg.reports_dir.clone(),
        rejects_dir: cfg.rejects_dir.clone(),
        quiet: args.quiet || !std::io::stderr().is_terminal(),
        retry: RetryPolicy {
            max_retries: args.retries,
            ..Default::default()
        },
        target_name,
        rerun: args.rerun,
        accept_changed: args.accept_changed,
        fresh: args.fresh,
        since_last: args.since_last,
        sync_deletes: args.sync_deletes,
        no_backup: args.no_backup,
        restore_on_failure: args.restore_on_failure,
        lock_ttl: std::time::Duration::from_secs(args.lock_ttl.max(1)),
    };
    let report = run::migrate(&pipeline, steps, &source, &target, &ledger, &opts).await?;
    crate::out!("{}", crate::redact::redact_text(&report.render_text()));
    if let Some(keep) = cfg.backups_keep
        && !args.dry_run
        && report.error.is_none()
        && !report.entities.is_empty()
    {
        // Retention is housekeeping: a failure to prune is told, the run still stands.
        match prune_after_run(&ledger, &report, keep).await {
            Ok(text) => crate::out!("{text}"),
            Err(e) => crate::errln!(
                "warning: pruning backups ([backups] keep = {keep}) failed: {}",
                crate::redact::redact_text(&error_text(&e))
            ),
        }
    }
    if let Some(e) = &report.error {
        crate::errln!("error: {}", crate::redact::redact_text(e));
        return Ok(Outcome::Failed);
    }
    Ok(if report.totals.rejected > 0 {
        Outcome::FinishedWithRejects
    } else {
        Outcome::Success
    })
}

/// `[backups] keep` after a successful run: prunes the backups of the run's entities, never those
/// the run took, under the lock (the run has released its own). Returns what to print.
async fn prune_after_run(
    ledger: &Ledger,
    report: &crate::monitor::report::RunReport,
    keep: usize,
) -> Result<String> {
    use crate::ledger::retention;
    let req = retention::PruneRequest {
        keep,
        entities: Some(report.entities.iter().map(|e| e.name.clone()).collect()),
        protect: report
            .entities
            .iter()
            .filter_map(|e| e.backup.clone())
            .collect(),
        dry_run: false,
    };
    let run_id = run::new_run_id();
    let lock = ledger
        .acquire_lock(&run_id, "backup prune", crate::ledger::lock::DEFAULT_TTL)
        .await?;
    let result = retention::prune(ledger, &req).await;
    lock.release().await?;
    let verdicts = result?;
    if verdicts.iter().all(|v| v.keep.is_some()) {
        return Ok(String::new());
    }
    let dropped: Vec<&retention::Verdict> = verdicts.iter().filter(|v| v.keep.is_none()).collect();
    let mut text = format!(
        "backups ([backups] keep = {keep}): dropped {} older backup(s)\n",
        dropped.len()
    );
    for v in dropped {
        text.push_str(&format!(
            "  dropped {} ({}, run {})\n",
            v.backup.name, v.backup.collection, v.backup.run_id
        ));
    }
    Ok(text)
}

async fn plan(cli: &Cli, args: &PlanArgs) -> Result<Outcome> {
    let cfg = load_config(cli, Overrides::default())?;
    let pipeline = load_pipeline(&cfg, &args.pipeline)?;
    let steps = pipeline.select(&args.names)?;
    crate::outln!(
        "pipeline {} ({})",
        pipeline.spec.name,
        pipeline.path.display()
    );
    let prereqs = pipeline.prerequisites(&steps);
    if !prereqs.is_empty() {
        crate::outln!(
            "requires already migrated: {}",
            prereqs.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    // With a source configured, check each mapping against it and show row counts.
    let mut session = match cfg.source_url.as_deref() {
        Some(url) => Some(SourceSession::open(url).await?),
        None => None,
    };
    let mut current_stage = String::new();
    // Every mapping that does not compile against the source is listed, not only the first.
    let mut blocking = Vec::new();
    for (n, s) in steps.iter().enumerate() {
        if s.stage != current_stage {
            crate::outln!("stage {}", s.stage);
            current_stage = s.stage.clone();
        }
        let m = pipeline.mappings.get(&s.entity)?;
        let embeds: Vec<&str> = m.spec.embeds.iter().map(|e| e.path.as_str()).collect();
        let mut line = format!(
            "  {:>2}. {:<24} → {:<24} from {}",
            n + 1,
            s.entity,
            m.collection(),
            m.path.display()
        );
        if !embeds.is_empty() {
            line.push_str(&format!(" (embeds {})", embeds.join(", ")));
        }
        if let Some(session) = session.as_mut() {
            match run::compile_plans(&pipeline, std::slice::from_ref(s), session).await {
                Ok(plans) => {
                    let rows = session.count(&plans[0].relation).await?;
                    line.push_str(&format!(", {rows} rows"));
                }
                // A source error (a missing table) leaves the snapshot's transaction aborted:
                // nothing after it could be described, so it ends the command.
                Err(run::RunError::Mapping(e)) => {
                    line.push_str(", BLOCKED (see below)");
                    blocking.push(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        crate::outln!("{line}");
    }
    if let Some(s) = session {
        s.close().await;
    }
    for e in &blocking {
        println!("BLOCKING: {e}");
    }
    Ok(if blocking.is_empty() {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

async fn schema(cli: &Cli, cmd: &SchemaCommand) -> Result<Outcome> {
    let (args, apply) = match cmd {
        SchemaCommand::Show(a) => (a, false),
        SchemaCommand::Apply(a) => (a, true),
    };
    if args.target != TargetKind::Appwrite {
        anyhow::bail!("MongoDB needs no schema: collections are created by the first write");
    }
    let cfg = load_config(cli, Overrides::default())?;
    let pipeline = load_pipeline(&cfg, &args.pipeline)?;
    let steps = pipeline.select(&args.names)?;
    let mut session = SourceSession::open(cfg.require_source()?).await?;
    let plans = run::compile_plans(&pipeline, &steps, &mut session).await?;
    session.close().await;
    let target = if apply {
        Some(connect_target(&cfg, Some(TargetKind::Appwrite), AppwriteTuning::default()).await?)
    } else {
        None
    };
    for p in &plans {
        if p.appwrite_users.is_some() {
            crate::outln!("{}: Appwrite users (Auth), no table", p.entity);
            continue;
        }
        let spec = crate::sink::appwrite::schema::table_spec(p);
        let children = crate::sink::appwrite::schema::child_tables(p);
        let tables = std::iter::once((spec, format!("({})", p.entity))).chain(
            children
                .into_iter()
                .map(|c| (c.table, format!("(child table of {}: {})", p.entity, c.key))),
        );
        for (spec, what) in tables {
            crate::outln!("table {} {what}", spec.id);
            for c in &spec.columns {
                let (kind, body) = c.request();
                let size = body
                    .get("size")
                    .map(|s| format!("({s})"))
                    .unwrap_or_default();
                let json = match c.kind {
                    crate::sink::appwrite::schema::Kind::Json => " JSON text",
                    _ => "",
                };
                let array = if c.array { "[]" } else { "" };
                crate::outln!("  {:<28} {kind}{size}{array}{json}", c.key);
            }
            for i in &spec.indexes {
                crate::outln!("  index {} (key: {})", i.key, i.columns.join(", "));
            }
        }
        if let Some((t, _, _)) = &target {
            t.prepare(p).await?;
            crate::outln!("  applied");
        }
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("ledger write failed: {source}")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn error_text_says_each_cause_once() {
        let inner = std::io::Error::other("connection refused");
        let err = anyhow::Error::new(Outer { source: inner }).context("cannot migrate");
        assert_eq!(
            error_text(&err),
            "cannot migrate: ledger write failed: connection refused"
        );
    }

    #[test]
    fn error_text_stops_at_a_driver_error() {
        let io = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "expected to read 219 bytes, got 21 bytes at EOF",
        );
        let err = anyhow::Error::new(crate::source::postgres::SourceError::Query {
            context: "read patients".into(),
            source: sqlx::Error::Io(io),
        });
        assert_eq!(
            error_text(&err),
            "source query failed (read patients): the source connection was closed (backend terminated?)"
        );
    }
}
