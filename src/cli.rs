//! The command line: every clap type (doc comments are the help text), the output macros and the
//! outcome. Only commands that work are listed; `crate::commands` runs them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::TargetKind;

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
    /// Draft mappings and a pipeline from the live source's catalog, to review and commit.
    ///
    /// Reads tables, columns, keys, foreign keys, checks, indexes and comments, and a sample of
    /// up to 2,000 rows of each table (the widths of its values, and values the default
    /// conversion would reject, which the drafts quote in their notes), and writes
    /// `DIR/pipelines/<name>.toml` and `DIR/mappings/<table>.toml`; `--diff` lists what changed
    /// in the schema against existing mappings instead.
    Scaffold(ScaffoldArgs),
    /// The data-mapping document for a sign-off, from the mappings and the live source.
    ///
    /// Per collection its source tables, every field with source column and type, target type,
    /// transforms, defaults, rules, references, embeds, indexes, and the conversions that lose
    /// information or need a decision.
    Docs(DocsArgs),
    /// Pre-flight: connectivity, every mapping against the live source, and a scan of the data for
    /// conversions that would lose information or reject rows. Writes nothing.
    Check(CheckArgs),
    /// The sign-off report of a run (default: the latest) joined with its verification.
    Report(ReportArgs),
    /// Compare the target with the source: re-derive every expected document with the mappings and
    /// compare by _id; list missing, unexpected and different documents; check references.
    Verify(VerifyArgs),
    /// Show every stage's state in the target: applied, pending, failed, interrupted (with its
    /// checkpoint), rolling back (a rollback cut short), rolled back, or changed since applied;
    /// and who holds the lock.
    Status(StatusArgs),
    /// List past runs.
    History(HistoryArgs),
    /// Undo stages: by default every stage of the last run (and of the killed runs whose
    /// request it finished), newest first; after a rollback cut short, only that rollback.
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
    /// Serve the HTTP API over the changes, runs, lock and reports, and a live status page.
    ///
    /// Every `/api` route needs `Authorization: Bearer <token>`, the token from CUTOVER_API_TOKEN
    /// or the file `[serve] token_file` of the config; `GET /` is the status page.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (`IP:PORT`, or `HOST:PORT` such as `localhost:8088`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8088", value_parser = listen_address)]
    pub listen: std::net::SocketAddr,
    /// Serve without a token (refused unless the address is a loopback one).
    #[arg(long)]
    pub no_auth: bool,
    /// Allow `POST /api/migrations` to write new change files.
    #[arg(long)]
    pub allow_create: bool,
    /// Apply the pending changes before listening (several instances started together apply
    /// each change once: the others wait for the lock, then see it applied).
    #[arg(long, env = "MIGRATE_ON_START", value_parser = boolish, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub migrate_on_start: bool,
    /// With --migrate-on-start: a failed change makes `serve` exit non-zero (default: it serves,
    /// the failure shown in the status).
    #[arg(long, env = "MIGRATE_ON_START_FAIL_HARD", value_parser = boolish, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub migrate_on_start_fail_hard: bool,
    /// With --migrate-on-start: how long to wait for another instance's lock, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub lock_wait: u64,
    /// Directory of change files (default: the pipeline file's `changes_dir`, else
    /// pipelines/changes).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Pipeline file the runs started through the API use (default: run.pipeline from the
    /// config, else pipelines/registry.toml).
    #[arg(long, value_name = "PATH")]
    pub pipeline: Option<PathBuf>,
    /// The target the changes and runs go to (default: the pipeline's `target`, else
    /// target.default from the config, else mongodb), and its database.
    #[command(flatten)]
    pub target: TargetArgs,
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
    /// Only entries with this status (applied, failed, restore-failed, rolled-back, running,
    /// interrupted).
    #[arg(long)]
    pub status: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Where the change files are and which target they change.
#[derive(Debug, Args)]
pub struct ChangesTargetArgs {
    /// Directory of change files (default: the pipeline file's `changes_dir`, else
    /// pipelines/changes).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Target: mongodb, or appwrite (its operations name a `table`; see pipelines/changes/README.md)
    /// (default: the configured pipeline's `target`, else the config's `[target] default`, else
    /// mongodb — as `migrate`, `status` and `serve` choose).
    #[arg(long, value_enum)]
    pub target: Option<ChangesTarget>,
    /// Target database (overrides CUTOVER_MONGODB_DATABASE or APPWRITE_DATABASE and the
    /// config).
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChangesTarget {
    Mongodb,
    Appwrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChangeTemplate {
    Empty,
    AddField,
    RenameField,
    Transform,
    Index,
    Seed,
    Archive,
    Schema,
    Sanitize,
}

#[derive(Debug, Args)]
pub struct ChangesNewArgs {
    /// What the change does, in a few words (the file name's slug).
    pub name: String,
    /// The operation the new file starts with.
    #[arg(long, value_enum, default_value_t = ChangeTemplate::Empty)]
    pub template: ChangeTemplate,
    /// Directory of change files (default: the pipeline file's `changes_dir`, else
    /// pipelines/changes).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The target whose operations the template writes (appwrite: tables, columns, rows)
    /// (default: the configured pipeline's `target`, else the config's `[target] default`, else
    /// mongodb).
    #[arg(long, value_enum)]
    pub target: Option<ChangesTarget>,
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
    /// Reverse the last N applied changes (at least 1).
    #[arg(long, value_name = "N", conflicts_with = "to", value_parser = at_least_one)]
    pub steps: Option<usize>,
    /// Reverse every applied change after this version (it stays applied).
    #[arg(long, value_name = "VERSION")]
    pub to: Option<u64>,
    /// Say which changes would be reversed, in order; reverse nothing (as the API's
    /// `down?dryRun=true`).
    #[arg(long)]
    pub dry_run: bool,
    /// Go on past a change whose reversal fails: the older ones chosen are still reversed,
    /// except those working on a collection of a change that failed (default: stop at the first
    /// failure).
    #[arg(long)]
    pub continue_on_error: bool,
    /// Print what was reversed, failed and left applied as JSON.
    #[arg(long)]
    pub json: bool,
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
    /// Entities or stages (default: all); a name that is both is the entity, `stage:NAME` the stage.
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
    /// Pipeline file whose `target` names the target (default: run.pipeline from the config,
    /// else pipelines/registry.toml), as migrate, verify and status read it.
    #[arg(long, value_name = "PATH")]
    pub pipeline: Option<PathBuf>,
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
    /// Entities or stages (default: all); a name that is both is the entity, `stage:NAME` the stage.
    pub names: Vec<String>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub files: FilesArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Scan only the first N rows of each entity (a quick look: rows past them are not checked,
    /// and the verdict says so). Default: every row, so that check finds every row the run
    /// will reject.
    #[arg(long, value_name = "N", conflicts_with = "full")]
    pub sample: Option<u64>,
    /// Scan every row (the default).
    #[arg(long)]
    pub full: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 even when rows will be rejected (otherwise: exit 2, like `migrate`).
    #[arg(long)]
    pub allow_rejects: bool,
    /// Judge a re-run with --sync-deletes: the target's records of rows gone from the source are
    /// deleted before the load, so their unique keys are free (without it they keep them, and a
    /// row taking one is rejected).
    #[arg(long)]
    pub sync_deletes: bool,
    /// Judge a re-run (`migrate --rerun`) of the selected entities that completed: a reference
    /// into one of them is judged by the rows this check rejects (a re-run removes their
    /// documents), not by what the target holds now.
    #[arg(long)]
    pub rerun: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Entities or stages (default: all); a name that is both is the entity, `stage:NAME` the stage.
    pub names: Vec<String>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub files: FilesArgs,
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
    /// Pipeline file whose `target` names the target (default: run.pipeline from the config,
    /// else pipelines/registry.toml), as migrate, verify and status read it.
    #[arg(long, value_name = "PATH")]
    pub pipeline: Option<PathBuf>,
    /// How many runs to show, newest first (at least 1).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..))]
    pub limit: i64,
    /// Only runs with this status.
    #[arg(long, value_parser = ["running", "completed", "completed_with_rejects", "failed", "interrupted", "rolled-back"])]
    pub status: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Entities or stages to roll back (their latest applied step); a name that is both is the
    /// entity, `stage:NAME` the stage.
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
    /// Roll back even when `cutover changes` applied or reversed after the run on the same
    /// collections or tables: the restore discards (or brings back) what they did; their
    /// records stay.
    #[arg(long)]
    pub ignore_changes: bool,
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
        /// Release it even when its holder is a process alive on this machine (it stops at its
        /// next look at the lock, leaving its work interrupted).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// List backups (`incomplete`: its copy was cut short; prune drops it).
    List(TargetArgs),
    /// Put a backup back into its collection (replacing the collection's documents).
    Restore {
        name: String,
        #[command(flatten)]
        target: TargetArgs,
        /// Restore even when `cutover changes` applied or reversed after the backup on its
        /// collections or tables: their effects are discarded (or come back), their records
        /// unchanged.
        #[arg(long)]
        ignore_changes: bool,
    },
    /// Delete a backup.
    Drop {
        name: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Keep the newest N backups of each collection and drop the rest (data and record); a
    /// backup `cutover rollback` would restore is always kept, an incomplete one always dropped.
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

/// Where the files of file mappings are.
#[derive(Debug, Args, Default, Clone)]
pub struct FilesArgs {
    /// The directory the paths of file mappings (`[file] path_column`) are relative to (default:
    /// CUTOVER_FILES_ROOT, else `[files] root` of the config).
    #[arg(long, value_name = "DIR")]
    pub files_root: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Entities or stages to run (default: all, in pipeline order); a name that is both is the
    /// entity, `stage:NAME` the stage.
    pub names: Vec<String>,

    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub files: FilesArgs,

    /// Read, transform and validate everything; write nothing to the target.
    #[arg(long)]
    pub dry_run: bool,

    /// Documents per write batch.
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,

    /// Write batches in flight.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,

    /// File uploads in flight in a file stage (`[file]` mappings), into GridFS or Appwrite
    /// Storage (default 4; 1: one file at a time). Takes the place of --concurrency there.
    #[arg(long, value_name = "N")]
    pub file_concurrency: Option<usize>,

    /// Record failed batches as rejects and go on (default: stop at the first failed batch).
    #[arg(long)]
    pub continue_on_error: bool,

    /// File stages into GridFS: read back every file recorded complete and upload again those
    /// whose stored bytes differ from the file on disk (`verify --full` names them); without
    /// it a re-run trusts the file's record (length and checksum).
    #[arg(long)]
    pub recheck_files: bool,

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

    /// With --rerun or --since-last: rewrite the documents even when `cutover changes` applied
    /// changes on their collections or tables (what the changes did to them is lost; their
    /// records stay applied). Without it such a run is refused.
    #[arg(long)]
    pub ignore_changes: bool,

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

#[derive(Debug, Args)]
pub struct DocsArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// The target the types are given for (default: the pipeline's, else the config's).
    #[arg(long, value_enum)]
    pub target: Option<TargetKind>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DocsFormat::Md)]
    pub format: DocsFormat,
    /// Write to this file instead of standard output.
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DocsFormat {
    Md,
    Html,
}

#[derive(Debug, Args)]
pub struct ScaffoldArgs {
    /// The source schema(s) to read (comma-separated, or the option again). With several, the
    /// first's tables keep their names and the others' are `schema.table` (entity
    /// `schema_table`); foreign keys between them become references like any other.
    #[arg(
        long,
        default_value = "public",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub schema: Vec<String>,
    /// Only these tables (comma-separated; default: every table of the schema; a table of a
    /// schema after the first as `schema.table`). A foreign key to a table left out is written
    /// as a plain value, with a comment.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub tables: Vec<String>,
    /// Where to write `pipelines/` and `mappings/`.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub out: PathBuf,
    /// The pipeline's name (default: the source database's name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The target the drafts are for (key fields and type notes differ).
    #[arg(long, value_enum, default_value_t = TargetKind::Mongodb)]
    pub target: TargetKind,
    /// Overwrite existing files.
    #[arg(long, conflicts_with = "diff")]
    pub force: bool,
    /// Write nothing: list what changed in the source's schema against the mappings in
    /// `DIR/mappings` (tables and columns added or gone, keys, NOT NULL, lengths, foreign keys).
    #[arg(long, conflicts_with = "tables")]
    pub diff: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Entities or stages (default: all); a name that is both is the entity, `stage:NAME` the stage.
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
    // No registered secret reaches the terminal, whatever carried it (a source value too).
    let text = crate::redact::scrub_secrets(&args.to_string());
    let result = if to_stderr {
        std::io::stderr().lock().write_all(text.as_bytes())
    } else {
        std::io::stdout().lock().write_all(text.as_bytes())
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

/// A yes/no setting as environments spell it: true/false, 1/0, yes/no, on/off (any case); empty
/// is no (what a compose file passes for a variable left unset).
fn boolish(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" | "n" | "f" => Ok(false),
        "1" | "true" | "yes" | "on" | "y" | "t" => Ok(true),
        other => Err(format!(
            "`{other}` is not a yes/no value (true/false, 1/0, yes/no, on/off)"
        )),
    }
}

/// `--listen`: an `IP:PORT`, or a `HOST:PORT` resolved to its first address.
fn listen_address(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = text.parse() {
        return Ok(a);
    }
    std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("`{text}` is no address to listen on (IP:PORT or HOST:PORT): {e}"))?
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

/// A count of at least 1 (`changes down --steps 0` reversed nothing and said all was well,
/// where the API answers 400: adv37 F9).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
