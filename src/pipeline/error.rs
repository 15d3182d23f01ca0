//! How a run fails: every error the engine reports, each saying what to do.

use std::path::PathBuf;

use crate::ledger::{self, LedgerError};
use crate::mapping::MappingError;
use crate::sink::mongodb::MongoError;
use crate::sink::target::SinkError;
use crate::source::postgres::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Target(#[from] MongoError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Lock(#[from] Box<ledger::lock::LockError>),
    #[error(transparent)]
    LockLost(#[from] ledger::lock::LockLost),
    /// The run cannot go on as asked (dependencies, a changed mapping, an unusable backup…); the
    /// message says why and what to do.
    #[error("{0}")]
    Refused(String),
    #[error("stopped: {rejected} rows rejected, more than --max-rejects {max}")]
    TooManyRejects { rejected: u64, max: u64 },
    #[error(
        "{entity}: a batch of {rows} rows could not be written ({attempts} attempt(s) of the batch, each request retried as the target allows): {cause}; its rows are not rejected: the stage stopped, counted up to its checkpoint, and the next `cutover migrate` resumes before them"
    )]
    BatchFailed {
        entity: String,
        rows: usize,
        attempts: u32,
        cause: Box<SinkError>,
    },
    #[error(
        "{entity}: {rows} documents could not be written after their retries ({message}); they are not rejected: the stage stopped, counted up to its checkpoint, and the next `cutover migrate` resumes before them"
    )]
    DocumentsFailed {
        entity: String,
        rows: u64,
        message: String,
    },
    #[error(
        "{entity}: {rows} rows in {batches} batches could not be written (--continue-on-error went on); they are not rejected: the stage is counted up to its checkpoint, before them, and the next `cutover migrate` resumes there"
    )]
    Unwritten {
        entity: String,
        rows: u64,
        batches: u64,
    },
    #[error(
        "accounting broken for {entity}: read {read} ≠ written {written} + rejected {rejected} + skipped {skipped}"
    )]
    Invariant {
        entity: String,
        read: u64,
        written: u64,
        rejected: u64,
        skipped: u64,
    },
    #[error("cannot write {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
}
