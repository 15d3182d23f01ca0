//! The run report: a human table on stdout and the same data as JSON in `reports/<run-id>.json`.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Counts;
use super::table::{Column, Table};
use crate::config::TargetKind;

/// A backup a step has just taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenBackup {
    pub name: String,
    pub documents: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntityReport {
    pub name: String,
    pub collection: String,
    pub read: u64,
    pub written: u64,
    pub rejected: u64,
    pub warnings: u64,
    pub skipped: u64,
    /// Rows in batches the target did not take (counted in `skipped`; a resume writes them).
    #[serde(default)]
    pub failed: u64,
    /// A step that stopped before its end: rows it read past its checkpoint, not counted here —
    /// the run that resumes it reads them again — and how many of them it had rejected (their
    /// lines are in the rejects folder's `read-again/`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub read_again: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub read_again_rejected: u64,
    /// Of those rows, how many it wrote (written again by the resume) and how many were in
    /// batches the target did not take.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub read_again_written: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub read_again_failed: u64,
    pub retried: u64,
    pub duration_ms: u64,
    pub rows_per_sec: f64,
    pub success_rate: f64,
    /// `completed`, `failed` or `aborted`.
    pub status: String,
    /// How the progress total was obtained (`count`).
    pub total_source: String,
    pub total: u64,
    /// `insert` (empty collection), `upsert`, or `none` (dry run).
    pub write_mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The interrupted run this step resumed, and how many source rows it had already covered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
    /// The interrupted run whose intent this step carried out (a plain `migrate` finishing a
    /// killed re-run or delta), with its flags: `run … (--rerun --sync-deletes)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finishing: Option<String>,
    /// The checksum of the mapping the step wrote with (a verification speaks of this run's
    /// documents only when it was made with the same mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_checksum: Option<String>,
    #[serde(default)]
    pub resumed_after_rows: u64,
    /// Of those rows, how many were rejected (their lines are in this run's rejects file).
    #[serde(default)]
    pub resumed_after_rejected: u64,
    /// [ms since the run began, rows read, rows written], sampled every 250 ms.
    #[serde(default)]
    pub timeline: Vec<[u64; 3]>,
    /// For `--sync-deletes`: target documents removed (or, in a dry run, that would be).
    #[serde(default)]
    pub deleted: u64,
    /// For `--since-last`: what this step copied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<String>,
    /// Appwrite: requests sent for this step, and 429 answers waited out (retries are in `retried`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttled: Option<u64>,
    /// The backup this step took before writing into a non-empty collection, its documents and
    /// the time it took (part of `duration_ms`'s stage, not of the rows' throughput).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    #[serde(default)]
    pub backup_documents: u64,
    #[serde(default)]
    pub backup_ms: u64,
    /// The run that took the backup, when an earlier one did (a resumed or adopted step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_by: Option<String>,
    /// Completed by this earlier run, which was interrupted before it ended (and so wrote no
    /// report): the counts are that step's as the ledger recorded them, and its rejects were
    /// copied into this run's files. Not part of this run's own totals in the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_by: Option<String>,
    /// Documents an earlier run wrote for rows this run rejected (their older version), removed.
    #[serde(default)]
    pub stale_removed: u64,
    /// The same for Appwrite users, which are blocked (status off), not deleted: users cannot be
    /// backed up, and a deleted account (its password hash, what the application changed on it
    /// since) could not be put back.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stale_blocked: u64,
    /// Per embed, the child rows whose parent row is not in the source: in no document, each a
    /// line of the rejects file (stage `embed`, rule `orphan_child`). Not source rows of the
    /// entity: not part of `read` nor of `rejected`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphan_children: Vec<OrphanChildren>,
    /// A file stage: what this run uploaded (a resumed part's files not included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FileStats>,
    /// Rejected rows by rule, as the run's rejects file lists them (a resumed part's included;
    /// a row rejected under several rules counts under each; orphan child rows are apart).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rejected_by_rule: std::collections::BTreeMap<String, u64>,
    /// MongoDB: the mapping's indexes, built after the load, with their build times.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<IndexBuild>,
    /// MongoDB: the validator level set after the load (`strict`, `moderate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator: Option<String>,
    /// Appwrite: existing columns updated before the load because the mapping's rules changed
    /// (or left as they are, said why), a sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schema_changes: Vec<String>,
    /// What else the run has to say about the step, a sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One index built after a collection's load.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IndexBuild {
    pub name: String,
    pub ms: u64,
}

/// The files of a file stage, as this run moved them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FileStats {
    /// Files uploaded, and their bytes.
    pub uploaded: u64,
    pub bytes: u64,
    /// Files found complete already (same length and sha256): written, not uploaded again.
    pub unchanged: u64,
    /// Bytes uploaded per second of the stage, in MB (10^6 bytes).
    pub mb_per_sec: f64,
    /// Appwrite Storage: files an earlier run uploaded for rows rejected now, kept as they were
    /// (a bucket cannot be backed up, so a deleted file could not be put back).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub kept: u64,
}

impl FileStats {
    pub fn new(uploaded: u64, bytes: u64, unchanged: u64, duration_ms: u64) -> FileStats {
        let secs = (duration_ms as f64 / 1000.0).max(0.001);
        FileStats {
            uploaded,
            bytes,
            unchanged,
            mb_per_sec: round1(bytes as f64 / 1e6 / secs),
            kept: 0,
        }
    }

    /// One line of the text report.
    pub fn sentence(&self) -> String {
        format!(
            "{} files uploaded ({:.1} MB, {} MB/s), {} complete already",
            self.uploaded,
            self.bytes as f64 / 1e6,
            self.mb_per_sec,
            self.unchanged
        )
    }
}

/// The child rows of one embed that belong to no parent row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphanChildren {
    /// The embed's path.
    pub embed: String,
    /// The child source and the parent's, as the mapping names them (empty when unknown: a
    /// step completed by an interrupted run is reported from its rejects file).
    pub child_source: String,
    pub parent_source: String,
    pub rows: u64,
}

impl OrphanChildren {
    /// The sentence the text report (and the sign-off) gives.
    pub fn sentence(&self) -> String {
        let child = if self.child_source.is_empty() {
            "child rows".to_string()
        } else {
            format!("rows of {}", self.child_source)
        };
        let parent = if self.parent_source.is_empty() {
            "parent".to_string()
        } else {
            self.parent_source.clone()
        };
        format!(
            "{} {child} belong to no {parent} row and were not embedded in `{}` (rejects file: stage embed, rule orphan_child)",
            self.rows, self.embed
        )
    }
}

impl EntityReport {
    pub fn new(name: &str, collection: &str, c: Counts, duration_ms: u64) -> EntityReport {
        let secs = (duration_ms as f64 / 1000.0).max(0.001);
        EntityReport {
            name: name.to_string(),
            collection: collection.to_string(),
            read: c.read,
            written: c.written,
            rejected: c.rejected,
            warnings: c.warnings,
            skipped: c.skipped,
            failed: c.failed,
            read_again: 0,
            read_again_rejected: 0,
            read_again_written: 0,
            read_again_failed: 0,
            retried: c.retried,
            duration_ms,
            rows_per_sec: round1(c.read as f64 / secs),
            success_rate: success_rate(c.written, c.read, c.skipped),
            status: "completed".into(),
            total_source: "count".into(),
            total: 0,
            write_mode: "none".into(),
            error: None,
            resumed_from: None,
            finishing: None,
            mapping_checksum: None,
            resumed_after_rows: 0,
            resumed_after_rejected: 0,
            delta: None,
            requests: None,
            throttled: None,
            deleted: 0,
            timeline: Vec::new(),
            backup: None,
            backup_documents: 0,
            backup_ms: 0,
            backup_by: None,
            completed_by: None,
            stale_removed: 0,
            stale_blocked: 0,
            orphan_children: Vec::new(),
            files: None,
            rejected_by_rule: Default::default(),
            indexes: Vec::new(),
            validator: None,
            schema_changes: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Child rows of all embeds that belong to no parent row.
    pub fn orphans(&self) -> u64 {
        self.orphan_children.iter().map(|o| o.rows).sum()
    }

    /// Records the backup the step took.
    pub fn set_backup(&mut self, b: TakenBackup) {
        self.backup = Some(b.name);
        self.backup_documents = b.documents;
        self.backup_ms = b.duration_ms;
    }

    pub fn balanced(&self) -> bool {
        self.read == self.written + self.rejected + self.skipped
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    pub read: u64,
    pub written: u64,
    pub rejected: u64,
    pub warnings: u64,
    pub skipped: u64,
    pub retried: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub started_at: String,
    pub finished_at: String,
    pub dry_run: bool,
    /// The target as [`crate::sink::target::Target::display_name`] names it.
    pub target: String,
    /// The kind of target (absent from reports written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_kind: Option<TargetKind>,
    pub pipeline: String,
    /// `completed`, `completed_with_rejects`, `failed`.
    pub status: String,
    pub entities: Vec<EntityReport>,
    /// Selected entities the ledger shows as completed with the same mapping (not run again).
    #[serde(default)]
    pub already_applied: Vec<String>,
    pub totals: Totals,
    pub success_rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_full_run_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub rejects_dir: String,
    /// The configuration used (credentials redacted).
    #[serde(default)]
    pub config: serde_json::Value,
    /// Why the report file could not be written (not part of the file).
    #[serde(skip)]
    pub file_error: Option<String>,
}

/// Writes `bytes` to `path` whole or not at all: into a hidden file beside it, synced, then
/// renamed over it. A run killed while writing its report left an empty `.json` the readers of
/// the reports folder choked on (CI: chaos `awchild`).
pub fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// written / (read − skipped), as a percentage; 100 when nothing was to be written.
pub fn success_rate(written: u64, read: u64, skipped: u64) -> f64 {
    let denom = read.saturating_sub(skipped);
    if denom == 0 {
        // Nothing read, or nothing but skipped rows: a stage that wrote none of the rows it
        // read is no success (the thirteenth tester's T5 saw "100.0%" on a failed stage).
        return if skipped > 0 { 0.0 } else { 100.0 };
    }
    let rate = written as f64 * 100.0 / denom as f64;
    if written < denom {
        // Never round up to 100%: a run with a rejected row must not read as complete. Two
        // decimals, as printed (adv35 F4: floored to one and printed with a second `0`).
        (rate * 100.0).floor() / 100.0
    } else {
        (rate * 100.0).round() / 100.0
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl RunReport {
    /// The kind of target the run wrote to. Reports written before `target_kind` was recorded
    /// name it only as the first word of `target`.
    pub fn target_kind(&self) -> Option<TargetKind> {
        self.target_kind.or_else(|| {
            let legacy = self.target.split_whitespace().next()?;
            TargetKind::from_name(legacy)
        })
    }

    /// The run's wall time, from its start to its end (its stages' durations leave out the
    /// backups, index builds and checks around them: adv32 F5).
    pub fn wall_ms(&self) -> Option<u64> {
        let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
        let ms = (at(&self.finished_at)? - at(&self.started_at)?).num_milliseconds();
        u64::try_from(ms).ok()
    }

    pub fn compute_totals(&mut self) {
        let t = self.sum(|_| true);
        self.success_rate = success_rate(t.written, t.read, t.skipped);
        self.totals = t;
    }

    /// The totals of the steps this run carried out itself (without those it reports for an
    /// interrupted run): what the ledger records as the run's, so that history does not count
    /// a step twice.
    pub fn own_totals(&self) -> Totals {
        let mut t = self.sum(|e| e.completed_by.is_none());
        // Less the parts resumed: the interrupted runs that read them count them.
        for e in self.entities.iter().filter(|e| e.completed_by.is_none()) {
            let rows = e.resumed_after_rows;
            let rejected = e.resumed_after_rejected.min(rows);
            t.read = t.read.saturating_sub(rows);
            t.rejected = t.rejected.saturating_sub(rejected);
            t.written = t.written.saturating_sub(rows - rejected);
        }
        t
    }

    fn sum(&self, keep: impl Fn(&EntityReport) -> bool) -> Totals {
        let mut t = Totals::default();
        for e in self.entities.iter().filter(|e| keep(e)) {
            t.read += e.read;
            t.written += e.written;
            t.rejected += e.rejected;
            t.warnings += e.warnings;
            t.skipped += e.skipped;
            t.retried += e.retried;
            t.duration_ms += e.duration_ms;
        }
        t
    }

    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        write_whole(path, (crate::redact::redact_text(&text) + "\n").as_bytes())
    }

    /// The human summary table.
    /// What the entity table does not say, a line per fact: backups, deltas, files, rejects by
    /// rule, indexes, deletions, orphans, failed batches, stale documents, and the parts of an
    /// entity another run read (a resumed or completed step) — the same lines in every format.
    pub fn entity_notes(&self) -> Vec<String> {
        let mut s = String::new();
        // Said in every rendering (adv40 F6: the API's Markdown and HTML reports of a run whose
        // stages were all applied showed a 100 % run of 0 rows, without why).
        if !self.already_applied.is_empty() {
            let _ = writeln!(
                s,
                "already applied, not run again (--rerun to run them): {}",
                self.already_applied.join(", ")
            );
        }
        for e in &self.entities {
            // A GridFS backup counts the bucket's files (adv34 F2: "of 0 documents" read as if
            // its document collection, copied beside it, were empty too).
            let what = if e.backup.as_deref().is_some_and(|b| b.contains("(GridFS)")) {
                "files"
            } else {
                "documents"
            };
            match (&e.backup, &e.backup_by) {
                (Some(b), Some(by)) if *by != self.run_id => {
                    let _ = writeln!(
                        s,
                        "{}: backup {b} of {} {what} (taken by run {by})",
                        e.name,
                        thousands(e.backup_documents)
                    );
                }
                (Some(b), _) => {
                    let _ = writeln!(
                        s,
                        "{}: backup {b} of {} {what} in {}",
                        e.name,
                        thousands(e.backup_documents),
                        format_ms(e.backup_ms)
                    );
                }
                (None, _) => {}
            }
            if let Some(d) = &e.delta {
                let _ = writeln!(s, "{}: {d}", e.name);
            }
            if let Some(f) = &e.files {
                let _ = writeln!(s, "{}: {}", e.name, f.sentence());
            }
            if !e.rejected_by_rule.is_empty() {
                let rules: Vec<String> = e
                    .rejected_by_rule
                    .iter()
                    .map(|(rule, n)| format!("{rule} {}", thousands(*n)))
                    .collect();
                let _ = writeln!(s, "{}: rejected by rule: {}", e.name, rules.join(", "));
                // A failed upload is often passing (the file changed on disk meanwhile, a
                // refusal since lifted), but a rejected row is final for a plain `migrate`
                // (adv34 F4: "fix and re-run" silently did nothing).
                if let Some((_, n)) = e
                    .rejected_by_rule
                    .iter()
                    .find(|(rule, _)| rule.as_str() == crate::sink::gridfs::RULE_UPLOAD)
                    && !self.dry_run
                {
                    let _ = writeln!(
                        s,
                        "{}: {} row(s) rejected `{}` are not tried again by a plain `cutover migrate`; once their files are right (or the bucket's settings take them: its maximum file size, its allowed extensions), `cutover migrate --rerun {}` uploads them",
                        e.name,
                        thousands(*n),
                        crate::sink::gridfs::RULE_UPLOAD,
                        e.name
                    );
                }
            }
            if !e.indexes.is_empty() {
                let built: Vec<String> = e
                    .indexes
                    .iter()
                    .map(|i| format!("{} ({})", i.name, format_ms(i.ms)))
                    .collect();
                let _ = writeln!(
                    s,
                    "{}: indexes built after the load: {}",
                    e.name,
                    built.join(", ")
                );
            }
            if let Some(v) = &e.validator {
                let _ = writeln!(s, "{}: validator set after the load ({v})", e.name);
            }
            for c in e.schema_changes.iter().chain(&e.notes) {
                let _ = writeln!(s, "{}: {c}", e.name);
            }
            if e.deleted > 0 {
                let verb = if self.dry_run {
                    "would delete"
                } else {
                    "deleted"
                };
                let _ = writeln!(
                    s,
                    "{}: {verb} {} target documents whose source rows are gone",
                    e.name, e.deleted
                );
            }
            for o in e.orphan_children.iter().filter(|o| o.rows > 0) {
                let _ = writeln!(s, "{}: {}", e.name, o.sentence());
            }
            if e.failed > 0 {
                let _ = writeln!(
                    s,
                    "{}: {} rows not written: their batches failed (counted as skipped, not rejected; the next `cutover migrate` resumes before them)",
                    e.name, e.failed
                );
            }
            if e.read_again > 0 {
                let mut parts = Vec::new();
                if e.read_again_written > 0 {
                    parts.push(format!(
                        "{} written (the resume writes them again)",
                        thousands(e.read_again_written)
                    ));
                }
                if e.read_again_rejected > 0 {
                    parts.push(format!(
                        "{} rejected (their lines are in {}/ of the rejects folder)",
                        thousands(e.read_again_rejected),
                        super::rejects::READ_AGAIN_DIR
                    ));
                }
                if e.read_again_failed > 0 {
                    parts.push(format!(
                        "{} in batches the target did not take",
                        thousands(e.read_again_failed)
                    ));
                }
                let parts = if parts.is_empty() {
                    String::new()
                } else {
                    format!(": {}", parts.join(", "))
                };
                let _ = writeln!(
                    s,
                    "{}: counted up to its checkpoint (the stage stopped, or went past a batch the target did not take); the {} rows it read past it are read again by the run that resumes it{parts}",
                    e.name,
                    thousands(e.read_again)
                );
            }
            if e.stale_removed > 0 {
                let kept = match &e.backup {
                    Some(b) => format!("the step's backup {b} keeps them"),
                    None => "no backup was taken: they are gone".to_string(),
                };
                let _ = writeln!(
                    s,
                    "{}: removed {} documents an earlier run wrote for rows rejected now (their older version; {kept})",
                    e.name, e.stale_removed
                );
            }
            if let Some(f) = e.files.as_ref().filter(|f| f.kept > 0) {
                let _ = writeln!(
                    s,
                    "{}: kept {} files an earlier run uploaded for rows rejected now, as they were (a Storage bucket cannot be backed up, so a deleted file could not be put back — delete them yourself if they must go)",
                    e.name, f.kept
                );
            }
            if e.stale_blocked > 0 {
                let _ = writeln!(
                    s,
                    "{}: blocked {} users an earlier run created for rows rejected now (status off: they cannot sign in; kept, since users cannot be backed up — delete them yourself if they must go)",
                    e.name, e.stale_blocked
                );
            }
            if let Some(by) = &e.completed_by {
                let _ = writeln!(
                    s,
                    "{}: completed by run {by}, which was interrupted before it ended (counted above from the ledger; its rejects copied into this run's file)",
                    e.name
                );
                if let Some(err) = &e.error {
                    let _ = writeln!(s, "{}: {err}", e.name);
                }
            }
            if let Some(run) = &e.finishing {
                let _ = writeln!(s, "{}: run as interrupted {run} was asked", e.name);
            }
            if let Some(from) = &e.resumed_from {
                let own = e.read.saturating_sub(e.resumed_after_rows);
                let _ = writeln!(
                    s,
                    "{}: resumed run {from} after {} rows ({} written, {} rejected; counted above, their rejects copied into this run's file); this run read the other {own} in {} — its rows/s is of those. Rows before the checkpoint changed in the source since that run are not read again: `cutover verify` names them, `cutover migrate --since-last --sync-deletes` copies them",
                    e.name,
                    e.resumed_after_rows,
                    e.resumed_after_rows - e.resumed_after_rejected.min(e.resumed_after_rows),
                    e.resumed_after_rejected,
                    format_ms(e.duration_ms)
                );
            }
        }
        s.lines().map(str::to_string).collect()
    }

    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let mode = if self.dry_run {
            " (dry run: nothing was written)"
        } else {
            ""
        };
        let _ = writeln!(s, "cutover run {} → {}{mode}", self.run_id, self.target);
        // A stage that did not complete says so after its success rate.
        let table = self.entity_table("", |e| {
            if e.status == "completed" {
                String::new()
            } else {
                e.status.clone()
            }
        });
        s.push_str(&table.text(""));
        let t = &self.totals;
        for note in self.entity_notes() {
            let _ = writeln!(s, "{note}");
        }
        if let Some(ms) = self.estimated_full_run_ms {
            let _ = writeln!(s, "estimated duration of the real run: {}", format_ms(ms));
        }
        if let Some(wall) = self.wall_ms().filter(|_| !self.entities.is_empty()) {
            let backups: u64 = self.entities.iter().map(|e| e.backup_ms).sum();
            let indexes: u64 = self
                .entities
                .iter()
                .flat_map(|e| &e.indexes)
                .map(|i| i.ms)
                .sum();
            // This run's own stages: an entity another (interrupted) run completed is reported
            // with that run's duration (adv34 F7: "wall time 118ms (the stages 18.7s)").
            let own: u64 = self
                .entities
                .iter()
                .filter(|e| e.completed_by.is_none())
                .map(|e| e.duration_ms)
                .sum();
            let mut parts = vec![format!("the stages {}", format_ms(own))];
            if backups > 0 {
                parts.push(format!("backups {}", format_ms(backups)));
            }
            if indexes > 0 {
                parts.push(format!("index builds {}", format_ms(indexes)));
            }
            let _ = writeln!(
                s,
                "wall time: {} ({}; the rest connecting, checks and the ledger)",
                format_ms(wall),
                parts.join(", ")
            );
        }
        let requests: u64 = self.entities.iter().filter_map(|e| e.requests).sum();
        if requests > 0 {
            let throttled: u64 = self.entities.iter().filter_map(|e| e.throttled).sum();
            let ms: u64 = self.entities.iter().map(|e| e.duration_ms).sum();
            let _ = writeln!(
                s,
                "appwrite: {requests} requests ({:.1}/s over the stages), {} retried, {throttled} throttled (429)",
                requests as f64 * 1000.0 / ms.max(1) as f64,
                t.retried
            );
        }
        if t.rejected > 0 || t.warnings > 0 || self.entities.iter().any(|e| e.orphans() > 0) {
            let _ = writeln!(s, "rejected rows and warnings: {}", self.rejects_dir);
        }
        if let Some(e) = &self.error {
            let _ = writeln!(s, "error: {e}");
        }
        let _ = writeln!(s, "status: {}", self.status);
        s
    }

    /// The per-entity table (and the totals), with a last column of words: `state` says
    /// what became of each entity.
    pub fn entity_table(
        &self,
        state_title: &'static str,
        state: impl Fn(&EntityReport) -> String,
    ) -> Table {
        let mut table = Table::new(
            Some("entities"),
            vec![
                Column::left("entity", 24),
                Column::right("read", 10),
                Column::right(self.written_label(), 10),
                Column::right("rejected", 9),
                Column::right("warnings", 9),
                Column::right("skipped", 8),
                Column::right("retried", 8),
                Column::right("duration", 10),
                Column::right("rows/s", 10),
                Column::right("success", 8),
                Column::left(state_title, 0),
            ],
        );
        for e in &self.entities {
            table.push(vec![
                e.name.clone(),
                e.read.to_string(),
                e.written.to_string(),
                e.rejected.to_string(),
                e.warnings.to_string(),
                e.skipped.to_string(),
                e.retried.to_string(),
                format_ms(e.duration_ms),
                format!("{:.0}", e.rows_per_sec),
                format!("{:.2}%", e.success_rate),
                state(e),
            ]);
        }
        let t = &self.totals;
        table.footer.push(vec![
            "total".into(),
            t.read.to_string(),
            t.written.to_string(),
            t.rejected.to_string(),
            t.warnings.to_string(),
            t.skipped.to_string(),
            t.retried.to_string(),
            format_ms(t.duration_ms),
            String::new(),
            format!("{:.2}%", self.success_rate),
            String::new(),
        ]);
        table
    }

    fn written_label(&self) -> &'static str {
        if self.dry_run {
            "would write"
        } else {
            "written"
        }
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn format_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_rate_ignores_skipped_rows() {
        assert_eq!(success_rate(90, 100, 0), 90.0);
        assert_eq!(success_rate(90, 100, 10), 100.0);
        assert_eq!(success_rate(0, 0, 0), 100.0);
        assert_eq!(success_rate(0, 1, 1), 0.0);
        assert_eq!(success_rate(188, 200, 0), 94.0);
        assert_eq!(success_rate(999_988, 1_000_000, 0), 99.99);
        assert_eq!(success_rate(999_999, 1_000_000, 0), 99.99);
        assert_eq!(success_rate(906, 908, 0), 99.77);
        assert_eq!(success_rate(4, 6, 0), 66.66);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(format_ms(15), "15ms");
        assert_eq!(format_ms(1500), "1.5s");
        assert_eq!(format_ms(125_000), "2m05s");
    }

    #[test]
    fn counts_read_with_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1234), "1,234");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn a_report_is_written_whole_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        write_whole(&path, b"{\"a\": 1}\n").unwrap();
        write_whole(&path, b"{\"a\": 2}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\": 2}\n");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["r.json"]);
        // A folder that is not there: an error, and no file.
        let missing = dir.path().join("no/r.json");
        assert!(write_whole(&missing, b"x").is_err());
    }

    #[test]
    fn a_backup_taken_is_a_line_of_the_text_report() {
        let mut e = EntityReport::new("users", "users", Default::default(), 10);
        e.set_backup(TakenBackup {
            name: "bk_1".into(),
            documents: 1234,
            duration_ms: 2300,
        });
        let r = RunReport {
            run_id: "r".into(),
            started_at: String::new(),
            finished_at: String::new(),
            dry_run: false,
            target: "t".into(),
            target_kind: None,
            pipeline: "p".into(),
            status: "completed".into(),
            entities: vec![e],
            already_applied: Vec::new(),
            totals: Default::default(),
            success_rate: 100.0,
            estimated_full_run_ms: None,
            error: None,
            rejects_dir: String::new(),
            config: serde_json::Value::Null,
            file_error: None,
        };
        let text = r.render_text();
        assert!(
            text.contains("users: backup bk_1 of 1,234 documents in 2.3s"),
            "{text}"
        );
        // adv34 F2: a GridFS backup counts the bucket's files.
        let mut r = r;
        r.entities[0].backup = Some("pics__backup__r (GridFS) + docs__backup__r".into());
        let text = r.render_text();
        assert!(text.contains("of 1,234 files in 2.3s"), "{text}");
        // adv34 F7: an entity an interrupted run completed is reported with that run's
        // duration; the wall time line counts this run's own stages only.
        r.started_at = "2026-12-07T10:00:00.000Z".into();
        r.finished_at = "2026-12-07T10:00:00.118Z".into();
        r.entities[0].duration_ms = 18_700;
        r.entities[0].completed_by = Some("earlier".into());
        let text = r.render_text();
        assert!(text.contains("wall time: 118ms (the stages 0ms"), "{text}");
        // adv34 F4: rows rejected `file_upload` get the command that tries them again.
        r.entities[0].rejected_by_rule = [("file_upload".to_string(), 2)].into_iter().collect();
        let text = r.render_text();
        assert!(
            text.contains("users: 2 row(s) rejected `file_upload` are not tried again by a plain `cutover migrate`; once their files are right (or the bucket's settings take them: its maximum file size, its allowed extensions), `cutover migrate --rerun users` uploads them"),
            "{text}"
        );
    }

    #[test]
    fn an_old_report_without_backup_fields_still_reads() {
        let mut v =
            serde_json::to_value(EntityReport::new("a", "a", Default::default(), 1)).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("backup_ms");
        o.remove("backup_documents");
        let e: EntityReport = serde_json::from_value(v).unwrap();
        assert_eq!((e.backup, e.backup_ms), (None, 0));
    }
}
