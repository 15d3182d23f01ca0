//! Counters, progress bars, rejects files and the run report. Stages never print: they bump
//! counters; this module turns them into what the operator sees.

pub mod live;
pub mod mapping_doc;
pub mod rejects;
pub mod report;
pub mod signoff;
pub mod table;

use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Live counters of one entity.
#[derive(Debug, Default)]
pub struct EntityCounters {
    pub read: AtomicU64,
    pub written: AtomicU64,
    pub rejected: AtomicU64,
    pub warnings: AtomicU64,
    pub skipped: AtomicU64,
    /// Rows of batches that could not be written (part of `skipped`: not written, not refused).
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub batches: AtomicU64,
    pub bytes: AtomicU64,
    /// A file stage: files uploaded, their bytes, and files found complete already.
    pub files_uploaded: AtomicU64,
    pub file_bytes: AtomicU64,
    pub files_unchanged: AtomicU64,
    /// A file stage into Appwrite Storage: files an earlier run uploaded for rows rejected now,
    /// kept as they were (a bucket cannot be backed up: a deleted file could not be put back).
    pub files_kept: AtomicU64,
    /// Documents of rows now rejected that an earlier run had written (an older version),
    /// removed so that the target holds what a fresh run would.
    pub removed: AtomicU64,
    /// Per embed (by index), child rows that belong to no parent row: embedded nowhere. Not
    /// source rows of the entity (not in `read`).
    pub orphans: std::sync::Mutex<Vec<u64>>,
}

/// A point-in-time copy of [`EntityCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub read: u64,
    pub written: u64,
    pub rejected: u64,
    pub warnings: u64,
    pub skipped: u64,
    pub failed: u64,
    pub retried: u64,
    pub batches: u64,
    pub bytes: u64,
}

impl EntityCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts an orphan child row of embed `embed`.
    pub fn add_orphan(&self, embed: usize) {
        let mut o = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        if o.len() <= embed {
            o.resize(embed + 1, 0);
        }
        o[embed] += 1;
    }

    /// The orphan child rows of embed `embed` so far.
    pub fn orphans_of(&self, embed: usize) -> u64 {
        let o = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        o.get(embed).copied().unwrap_or(0)
    }

    pub fn snapshot(&self) -> Counts {
        Counts {
            read: self.read.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            warnings: self.warnings.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

impl Counts {
    /// read = written + rejected + skipped: every row accounted for.
    pub fn balanced(&self) -> bool {
        self.read == self.written + self.rejected + self.skipped
    }
}

/// What a long operation outside a run is doing (a versioned change's operation): a label and
/// how many documents it has backed up and worked through. Bumped by the work, read by a
/// spinner ([`watch`]) or anyone else (a server's status).
#[derive(Debug, Default)]
pub struct Activity {
    what: std::sync::Mutex<String>,
    backed_up: AtomicU64,
    done: AtomicU64,
}

impl Activity {
    /// A new step: its label, its counts from zero.
    pub fn begin(&self, what: String) {
        *self.what.lock().unwrap_or_else(|p| p.into_inner()) = what;
        self.backed_up.store(0, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
    }

    pub fn backed_up(&self, n: u64) {
        self.backed_up.fetch_add(n, Ordering::Relaxed);
    }

    pub fn done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// (label, documents backed up, documents worked through) of the current step.
    pub fn snapshot(&self) -> (String, u64, u64) {
        (
            self.what.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            self.backed_up.load(Ordering::Relaxed),
            self.done.load(Ordering::Relaxed),
        )
    }

    /// One line for a spinner: `add_field patients: 12,000 backed up, 8,000 done`.
    pub fn line(&self) -> String {
        let (what, backed, done) = self.snapshot();
        if what.is_empty() {
            return "starting".into();
        }
        format!("{what}: {backed} documents backed up, {done} done")
    }
}

/// A spinner on stderr showing `activity` until the returned bar is finished (hidden when quiet
/// or when stderr is not a terminal). Needs a tokio runtime.
pub fn watch(activity: std::sync::Arc<Activity>, quiet: bool) -> ProgressBar {
    let target = if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr_with_hz(5)
    };
    let pb = ProgressBar::with_draw_target(None, target);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let shown = pb.clone();
    tokio::spawn(async move {
        while !shown.is_finished() {
            shown.set_message(activity.line());
            shown.tick();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    pb
}

/// Progress bars, one per running entity; hidden when stderr is not a terminal or when quiet.
pub struct Progress {
    multi: MultiProgress,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr_with_hz(5)
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
        }
    }

    /// A bar for `entity` with `total` rows (`exact` says whether the total is a count or an estimate).
    pub fn bar(&self, entity: &str, total: u64, exact: bool) -> ProgressBar {
        let pb = self.multi.add(ProgressBar::new(total));
        let total_note = if exact { "" } else { " (estimated total)" };
        pb.set_style(
            ProgressStyle::with_template(&format!(
                "{{prefix:>16}} [{{bar:30}}] {{pos}}/{{len}} rows{total_note} {{per_sec}} eta {{eta}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_prefix(entity.to_string());
        pb
    }
}
