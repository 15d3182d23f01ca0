//! One stage of a run: where an interrupted step stopped (`Resume`), the per-stage facts the
//! reader and writer need (`StageRun`), and getting the target ready and recording the step's
//! start in the ledger (`prepare_step`: schema, emptiness, backup, write mode).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use super::error::RunError;
use super::options::RunOptions;
use super::removal::Remover;
use crate::ledger::{self, Ledger, StepRecord};
use crate::mapping::plan::Plan;
use crate::monitor::rejects::RejectsWriter;
use crate::monitor::{EntityCounters, Progress};
use crate::sink::mongodb::WriteMode;
use crate::sink::target::{Destination, Target};
use crate::transform::row::MapContext;

/// What every stage of a run shares: the target and the ledger, the operator's options, the
/// run's id, number and source snapshot, the row mapper's inputs, and the run's rejects files,
/// progress display and count of rejected rows (for --max-rejects).
#[derive(Clone, Copy)]
pub(super) struct RunCtx<'a> {
    pub(super) target: &'a Target,
    pub(super) ledger: &'a Ledger,
    pub(super) opts: &'a RunOptions,
    pub(super) run_id: &'a str,
    /// The run's number in the ledger (0 in a dry run).
    pub(super) run_number: i64,
    /// The source snapshot's time (RFC 3339, microseconds).
    pub(super) snapshot_at: &'a str,
    /// See `SourceSession::unseen_from_xid`.
    pub(super) unseen_xid: Option<i64>,
    pub(super) map: &'a MapContext,
    pub(super) rejects: &'a Arc<RejectsWriter>,
    pub(super) progress: &'a Progress,
    pub(super) total_rejected: &'a Arc<AtomicU64>,
}

/// What the reader and the writer of one entity's stage share. The writer is a task of its own:
/// it gets a clone (the counters, rejects and count of rejected rows are shared through `Arc`s).
#[derive(Clone)]
pub(super) struct StageCtx {
    pub(super) target: Target,
    pub(super) opts: RunOptions,
    pub(super) entity: String,
    pub(super) collection: String,
    pub(super) counters: Arc<EntityCounters>,
    pub(super) rejects: Arc<RejectsWriter>,
    pub(super) total_rejected: Arc<AtomicU64>,
    /// Upserts into a destination cutover wrote before (`StageRun::prior`): the older documents
    /// of rows rejected now (by the mapping or by the target) are removed.
    pub(super) remove_stale: bool,
    /// The same into an Appwrite Storage bucket, which cannot be backed up: the older files
    /// (and rows) of rows rejected now are kept as they were, and counted.
    pub(super) keep_stale: bool,
    /// Removes records with a note in the ledger first (see `removal`).
    pub(super) remover: Remover,
    /// Set by the reader once it has sent the stage's last row (not when it stopped early): the
    /// rows set aside by a unique index are judged only then (see `deferred`).
    pub(super) read_all: Arc<std::sync::atomic::AtomicBool>,
}

/// The directory of this run's rejects files, absolute (as the ledger records it).
fn run_rejects_dir(opts: &RunOptions, run_id: &str) -> String {
    let dir = opts.rejects_dir.join(run_id);
    std::path::absolute(&dir)
        .unwrap_or(dir)
        .display()
        .to_string()
}

/// Gets the target ready for one stage and records the step's start in the ledger: the schema
/// (Appwrite), whether the destination is empty, its backup, and the write mode. Returns the
/// destination as the ledger records it, whether it was empty, the backup's name, and the
/// backup when this step took it.
pub(super) async fn prepare_step(
    p: &Plan,
    run: &RunCtx<'_>,
    // The unfinished step this one continues (resumed or started over): its record of the
    // destination's state before the stage wrote into it stands.
    resume: Option<&ledger::StepRecord>,
    stage: &mut StageRun,
) -> Result<
    (
        Destination,
        bool,
        Option<String>,
        Option<ledger::TakenBackup>,
    ),
    RunError,
> {
    let RunCtx {
        target,
        ledger,
        opts,
        run_id,
        run_number,
        snapshot_at,
        unseen_xid,
        ..
    } = *run;
    let mut backup = None;
    let mut taken = None;
    stage.schema_changes = target.prepare(p).await?;
    let destination = target.destination(&p.collection);
    // Asked once: nothing writes the destination before the step's first batch (a backup only
    // reads it), and for Appwrite users the answer pages through the project's users.
    let empty_now = target.is_empty(&p.collection).await?;
    let mut was_empty = empty_now;
    // The earlier step's record stands only for the same destination, and only while the
    // backup it names still exists; otherwise this step records the state it finds.
    let inherited = match resume {
        Some(r) if r.destination != destination => {
            tracing::warn!(entity = %p.entity, before = %r.destination, now = %destination, "the unfinished step wrote elsewhere; this one records the state it finds");
            None
        }
        Some(r) => match &r.backup {
            Some(name) if ledger.find_backup(name).await?.is_none() => {
                tracing::warn!(entity = %p.entity, backup = %name, "the backup of the unfinished step is gone; a new one is taken of the state found now");
                None
            }
            _ => Some(r),
        },
        None => None,
    };
    if let Some(r) = inherited {
        was_empty = r.was_empty;
        backup = r.backup.clone();
    } else if !was_empty && !opts.no_backup {
        if matches!(destination, Destination::Storage { .. }) {
            tracing::warn!(entity = %p.entity, "{destination} cannot be backed up: rollback undoes this step only with the entity's earlier steps back to one that found it empty (and refuses when none did); the files of rows rejected now are kept");
        } else if !destination.can_back_up() {
            tracing::warn!(entity = %p.entity, "{destination} cannot be backed up; rollback of this step will refuse");
        } else {
            let b = ledger.backup(&destination, run_id, &p.entity).await?;
            backup = Some(b.name.clone());
            taken = Some(b);
        }
    }
    stage.mode = Some(if empty_now {
        WriteMode::Insert
    } else {
        WriteMode::Upsert
    });
    let mapping = p.mapping_path.display().to_string();
    let checkpoint = stage.resume.as_ref().map(|r| (r.key.as_slice(), r.covered));
    // A resumed step holds rows read under the snapshots of every part: the next
    // `--since-last` must copy what changed after the earliest of them, or a row changed between
    // the crash and the resume, below the checkpoint, would never be copied.
    // With it the transaction id from which that part's rows may have escaped (the rows a
    // later part's hidden transactions wrote carry times after the earlier part's snapshot).
    let (earliest, earliest_xid) =
        match (&stage.resume, resume.and_then(|r| r.snapshot_at.as_deref())) {
            (Some(_), Some(before)) if earlier(before, snapshot_at) == before => {
                (before, resume.and_then(|r| r.snapshot_xid))
            }
            _ => (snapshot_at, unseen_xid),
        };
    ledger
        .start_step(&ledger::StepStart {
            run_id,
            run_number,
            entity: &p.entity,
            destination: &destination,
            mapping: &mapping,
            checksum: &p.checksum,
            was_empty,
            backup: backup.as_deref(),
            total: 0,
            resumed_from: stage.resume.as_ref().map(|r| r.from_run.as_str()),
            checkpoint,
            snapshot_at: earliest,
            snapshot_xid: earliest_xid,
            since: stage.since.as_ref().map(|s| s.at.as_str()),
            since_xid: stage.since.as_ref().and_then(|s| s.xid),
            since_rejects: stage.since.as_ref().and_then(|s| s.rejects.as_deref()),
            sync_deletes: stage.sync_deletes,
            rejects_dir: Some(&run_rejects_dir(opts, run_id)),
            inherited: stage.inherited,
        })
        .await?;
    // This step's start holds what the interrupted one removed: its notes may go.
    if let Some(r) = &stage.interrupted_run {
        ledger.forget_removals(r, &p.entity).await?;
    }
    Ok((destination, was_empty, backup, taken))
}

/// The earlier of two RFC 3339 instants (`b` when `a` cannot be read).
fn earlier<'a>(a: &'a str, b: &'a str) -> &'a str {
    match (
        chrono::DateTime::parse_from_rfc3339(a),
        chrono::DateTime::parse_from_rfc3339(b),
    ) {
        (Ok(x), Ok(y)) if x < y => a,
        (Ok(_), Ok(_)) => b,
        _ => b,
    }
}

/// Where an interrupted step stopped.
#[derive(Debug, Clone)]
pub(super) struct Resume {
    pub(super) from_run: String,
    /// Where the resumed run's rejects files are.
    pub(super) from_dir: PathBuf,
    pub(super) key: Vec<String>,
    pub(super) rows: u64,
    /// What the checkpoint covers (since the entity's first part); no batch of this step yet.
    pub(super) covered: ledger::Covered,
    /// How many of the interrupted step's own batches its checkpoint covers.
    pub(super) from_batches: u64,
    /// The orphan child rows among the covered lines copied, per embed path: counted by the
    /// interrupted run, not read again.
    pub(super) orphans: std::collections::BTreeMap<String, u64>,
}

/// Per-stage facts the reader and writer need.
pub(super) struct StageRun {
    /// When the run began (the report's timeline counts from it).
    pub(super) run_started: Instant,
    /// Delta run: only rows whose change-tracking column is at or after this instant.
    pub(super) since: Option<super::decide::Since>,
    /// Delete the documents whose source rows are gone at the end (`--sync-deletes`, or the
    /// interrupted step this one resumes had it).
    pub(super) sync_deletes: bool,
    pub(super) run_id: String,
    /// What the step cut short that this one resumes or starts over (and those it continued)
    /// removed: older documents of rows rejected now, records deleted by `--sync-deletes`.
    pub(super) inherited: (u64, u64),
    /// The run of that step: its removal notes go once this step's start records the counts.
    pub(super) interrupted_run: Option<String>,
    /// The interrupted run whose intent this step carries out (see `Decision::Run`).
    pub(super) finishing: Option<String>,
    pub(super) resume: Option<Resume>,
    /// `None` in a dry run.
    pub(super) mode: Option<WriteMode>,
    /// Where checkpoints go (`None` in a dry run).
    pub(super) ledger: Option<Ledger>,
    /// The lock's fencing check (`None` in a dry run).
    pub(super) fence: Option<ledger::lock::Fence>,
    /// cutover wrote the destination before (a step of the entity is applied, or was cut
    /// short): documents of rows rejected now are its own older ones, removed. Documents the
    /// collection held before cutover are never removed.
    pub(super) prior: bool,
    /// What preparing the target changed in an existing destination to match the mapping
    /// (Appwrite columns updated before the load), for the report.
    pub(super) schema_changes: Vec<String>,
    /// A dry run: where the ids (`id_text`) of the rows this stage rejects are kept, when a later
    /// stage of the run references the entity (its references to them are `reference_rejected`,
    /// as the run's would be: the rehearsal writes nothing the target could be asked about).
    pub(super) dry_rejected: Option<Arc<std::sync::Mutex<std::collections::HashSet<String>>>>,
}

/// Whether a step of `entity` still in effect (not rolled back, finished or cut short) wrote
/// `destination`: then documents there under the entity's ids may be cutover's own older ones.
/// A step that wrote another collection (the mapping's `collection` changed since) says nothing
/// about this one, whose documents may all be the application's.
pub(super) fn wrote_before(
    history: &[StepRecord],
    entity: &str,
    destination: &Destination,
) -> bool {
    let undone = ledger::undone(history);
    history.iter().any(|s| {
        s.entity == entity
            && s.destination == *destination
            && !undone.contains(&s.id)
            && s.status != ledger::ROLLED_BACK
            && s.status != ledger::ROLLING_BACK
    })
}
