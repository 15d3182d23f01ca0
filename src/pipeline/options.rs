//! What the operator asked of a `migrate` run (`RunOptions`), shared by every layer of the run
//! loop (decision, stage preparation, reader, writer). Re-exported as `pipeline::run::RunOptions`.

use std::path::PathBuf;

use crate::sink::retry::RetryPolicy;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub dry_run: bool,
    pub batch_size: usize,
    pub batch_bytes: usize,
    pub concurrency: usize,
    /// File uploads in flight in a file stage (its batches in flight: each uploads its files
    /// one after the other).
    pub file_concurrency: usize,
    pub continue_on_error: bool,
    /// A file stage reads back the GridFS files recorded complete and uploads again those whose
    /// bytes differ from the file's.
    pub recheck_files: bool,
    pub skip_validation: bool,
    pub max_rejects: Option<u64>,
    pub ignore_dependencies: bool,
    pub report_path: Option<PathBuf>,
    pub reports_dir: PathBuf,
    pub rejects_dir: PathBuf,
    pub quiet: bool,
    pub retry: RetryPolicy,
    pub target_name: String,
    /// Run stages again even when the ledger says they completed.
    pub rerun: bool,
    /// Keep data migrated with an older mapping and record the new mapping's checksum.
    pub accept_changed: bool,
    /// Ignore checkpoints of interrupted stages and start them over.
    pub fresh: bool,
    /// Copy only rows changed since the snapshot of each stage's last completed run.
    pub since_last: bool,
    /// Remove target documents whose source rows no longer exist.
    pub sync_deletes: bool,
    /// Do not copy a non-empty collection before writing into it.
    pub no_backup: bool,
    /// When a stage fails, put its collection back as it was.
    pub restore_on_failure: bool,
    pub lock_ttl: std::time::Duration,
    /// The directory the paths of file mappings are relative to (`None`: none given; a file
    /// stage then refuses to start).
    pub files_root: Option<PathBuf>,
}

impl RunOptions {
    /// What this command asks of entities that completed before.
    pub fn intent(&self) -> crate::ledger::RunIntent {
        crate::ledger::RunIntent {
            rerun: self.rerun,
            since_last: self.since_last,
            sync_deletes: self.sync_deletes,
        }
    }
}
