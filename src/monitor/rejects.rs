//! The rejects files: `rejects/<run-id>/<entity>.csv` for rejected rows and
//! `rejects/<run-id>/<entity>.warnings.csv` for rows written with warnings.
//!
//! The last column, `batch`, is the position of the row's batch in the step (empty for a line
//! carried over from the run a resumed step continues): a checkpoint covers the batches before
//! its own count, so a resume copies exactly the covered lines of the interrupted run's files and
//! reads the rest again — each row is then in the resumed run's files once.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::transform::{Issue, RULE_ORPHAN_CHILD, Stage};

const VALUE_MAX: usize = 200;
/// The `value` of a write-stage reject: a fingerprint of the document the target refused, so that
/// `verify` excuses the row's absence only while the source still maps to that same document.
pub fn document_fingerprint(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

const HEADER: [&str; 8] = [
    "entity",
    "source_key",
    "stage",
    "rule",
    "path",
    "message",
    "value",
    "batch",
];
/// Records are gathered up to this many bytes before they go to the file, in whole records.
const PENDING_MAX: usize = 64 * 1024;

/// What [`RejectsWriter::carry`] copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    /// Reject lines (a row rejected for several reasons has several).
    pub lines: u64,
    pub warnings: u64,
    /// Distinct rows among the reject lines (orphan child rows aside).
    pub rejected_rows: u64,
    /// Orphan child rows among the reject lines, per embed path (stage `embed`, rule
    /// [`RULE_ORPHAN_CHILD`]): each is one line.
    pub orphans: BTreeMap<String, u64>,
}

/// The folder, in a run's rejects folder, that holds the lines [`RejectsWriter::set_apart`] set
/// apart: rows past the checkpoint of a step that stopped before its end.
pub const READ_AGAIN_DIR: &str = "read-again";

/// What [`RejectsWriter::set_apart`] moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetApart {
    /// Rejected rows (distinct source keys per batch; orphan child rows aside).
    pub rejected_rows: u64,
    /// Reject lines and warning lines.
    pub lines: u64,
    pub warnings: u64,
    /// Orphan child rows, per embed path.
    pub orphans: BTreeMap<String, u64>,
}

/// Writes reject and warning records; created lazily per entity, safe to share between tasks.
pub struct RejectsWriter {
    dir: PathBuf,
    files: Mutex<HashMap<String, Records>>,
}

/// One CSV file and its records not written yet. The file only ever receives whole records, so
/// a process killed at any moment leaves no torn line for the next reader (a plain buffered
/// writer spills at a buffer boundary, mid-record).
struct Records {
    file: File,
    pending: Vec<u8>,
}

impl Drop for Records {
    fn drop(&mut self) {
        let _ = self.flush(); // as the CSV writer it replaces did
    }
}

impl Records {
    fn create(path: &Path) -> std::io::Result<Records> {
        Ok(Records {
            file: File::create(path)?,
            pending: Vec::new(),
        })
    }

    /// An existing file, written on at its end.
    fn append(path: &Path) -> std::io::Result<Records> {
        Ok(Records {
            file: std::fs::OpenOptions::new().append(true).open(path)?,
            pending: Vec::new(),
        })
    }

    fn record(&mut self, fields: [&str; 8]) -> std::io::Result<()> {
        let mut csv = csv::WriterBuilder::new()
            .buffer_capacity(1024)
            .from_writer(&mut self.pending);
        csv.write_record(fields)?;
        csv.flush()?; // into the pending bytes, not yet the file
        drop(csv);
        if self.pending.len() >= PENDING_MAX {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        use std::io::Write;
        if !self.pending.is_empty() {
            self.file.write_all(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }
}

/// The source keys (as written) of the rows rejected in `dir`'s file of `entity` for which
/// `wanted(stage, rule)` holds, each once, in the file's order (orphan child rows aside: their
/// keys are the children's). No file: none.
pub fn rejected_keys(
    dir: &Path,
    entity: &str,
    wanted: impl Fn(&str, &str) -> bool,
) -> std::io::Result<Vec<String>> {
    let bytes = match std::fs::read(dir.join(format!("{entity}.csv"))) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut r = csv::Reader::from_reader(bytes.as_slice());
    let mut seen = std::collections::HashSet::new();
    let mut keys = Vec::new();
    for record in r.records() {
        // A torn last line (a run killed mid-write) names no row the step accounts for.
        let Ok(record) = record else { break };
        let field = |i| record.get(i).unwrap_or_default();
        if (field(2) == Stage::Embed.as_str() && field(3) == RULE_ORPHAN_CHILD)
            || !wanted(field(2), field(3))
        {
            continue;
        }
        if seen.insert(field(1).to_string()) {
            keys.push(field(1).to_string());
        }
    }
    Ok(keys)
}

/// [`RejectsWriter::set_apart`] on the files of a run no writer holds: those of a run killed
/// before its end, whose lines past its checkpoint the run resuming it reads again.
pub fn set_apart_in(dir: &Path, entity: &str, batches: u64) -> std::io::Result<SetApart> {
    let mut out = SetApart::default();
    for name in [format!("{entity}.csv"), format!("{entity}.warnings.csv")] {
        split(dir, &name, batches, &mut out)?;
    }
    Ok(out)
}

/// Moves the lines of `dir/name` of batch `batches` and later to `dir/read-again/name`, adding
/// them up in `out`. Whether the file exists.
fn split(dir: &Path, name: &str, batches: u64, out: &mut SetApart) -> std::io::Result<bool> {
    let rejects = !name.ends_with(".warnings.csv");
    let path = dir.join(name);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut r = csv::Reader::from_reader(bytes.as_slice());
    let headers = r.headers().map_err(std::io::Error::other)?.clone();
    if headers.iter().collect::<Vec<_>>() != HEADER {
        // An older file without the batch column: its rows cannot be told apart.
        return Ok(true);
    }
    let mut kept = csv::Writer::from_writer(Vec::new());
    let mut past = csv::Writer::from_writer(Vec::new());
    kept.write_record(&headers)?;
    past.write_record(&headers)?;
    let mut past_lines = 0u64;
    let mut rows = std::collections::HashSet::new();
    for record in r.records() {
        // A torn last line (a run killed mid-write) is past any checkpoint: dropped.
        let Ok(record) = record else { break };
        if covered(&record, batches) {
            kept.write_record(&record)?;
            continue;
        }
        past.write_record(&record)?;
        past_lines += 1;
        let field = |i| record.get(i).unwrap_or_default().to_string();
        if !rejects {
            out.warnings += 1;
        } else if field(2) == Stage::Embed.as_str() && field(3) == RULE_ORPHAN_CHILD {
            *out.orphans.entry(field(4)).or_default() += 1;
        } else {
            out.lines += 1;
            rows.insert((field(1), field(7)));
        }
    }
    if rejects {
        out.rejected_rows += rows.len() as u64;
    }
    if past_lines > 0 {
        let apart = dir.join(READ_AGAIN_DIR);
        std::fs::create_dir_all(&apart)?;
        // Appended to what an earlier set-apart moved (a file is split once per stop).
        let target = apart.join(name);
        let bytes = past.into_inner().map_err(|e| e.into_error())?;
        let bytes = match std::fs::read(&target) {
            Ok(mut held) => {
                // Without the header line of the new part.
                let body = bytes
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(&bytes[..0], |i| &bytes[i + 1..]);
                held.extend_from_slice(body);
                held
            }
            Err(_) => bytes,
        };
        write_synced(&target, &bytes)?;
        // The new text replaces the file whole: a crash leaves the one or the other.
        let bytes = kept.into_inner().map_err(|e| e.into_error())?;
        let tmp = dir.join(format!(".{name}.tmp"));
        write_synced(&tmp, &bytes)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(true)
}

/// Whether a line is covered by a checkpoint of `batches` batches: carried over (no batch), or of
/// one of those batches.
fn covered(record: &csv::StringRecord, batches: u64) -> bool {
    match record.get(7) {
        Some("") | None => true,
        Some(b) => b.parse::<u64>().is_ok_and(|b| b < batches),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_data()
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= VALUE_MAX {
        return s.to_string();
    }
    let mut t: String = s.chars().take(VALUE_MAX).collect();
    t.push('…');
    t
}

impl RejectsWriter {
    pub fn new(dir: &Path) -> RejectsWriter {
        RejectsWriter {
            dir: dir.to_path_buf(),
            files: Mutex::new(HashMap::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file<'f>(
        &self,
        files: &'f mut HashMap<String, Records>,
        file: &str,
    ) -> std::io::Result<&'f mut Records> {
        if !files.contains_key(file) {
            std::fs::create_dir_all(&self.dir)?;
            let mut w = Records::create(&self.dir.join(file))?;
            w.record(HEADER)?;
            files.insert(file.to_string(), w);
        }
        Ok(files.get_mut(file).expect("inserted above"))
    }

    fn write(
        &self,
        file: String,
        entity: &str,
        key: &str,
        issue: &Issue,
        batch: Option<u64>,
    ) -> std::io::Result<()> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let w = self.file(&mut files, &file)?;
        let scrub = crate::redact::scrub_secrets;
        let batch = batch.map(|b| b.to_string()).unwrap_or_default();
        w.record([
            entity,
            &scrub(key),
            issue.stage.as_str(),
            &issue.rule,
            &issue.path,
            &scrub(&issue.message),
            &scrub(&truncate(&issue.value)),
            &batch,
        ])?;
        Ok(())
    }

    /// Records a rejected row (each error-severity issue is one line).
    pub fn reject(&self, entity: &str, key: &str, issues: &[Issue]) -> std::io::Result<()> {
        self.reject_in(entity, key, issues, None)
    }

    /// Records a rejected row of batch `batch` of the step.
    pub fn reject_in(
        &self,
        entity: &str,
        key: &str,
        issues: &[Issue],
        batch: Option<u64>,
    ) -> std::io::Result<()> {
        for issue in issues.iter().filter(|i| i.is_error()) {
            self.write(format!("{entity}.csv"), entity, key, issue, batch)?;
        }
        Ok(())
    }

    /// Records the warnings of a written row (of batch `batch` of the step).
    pub fn warn(
        &self,
        entity: &str,
        key: &str,
        issues: &[&Issue],
        batch: Option<u64>,
    ) -> std::io::Result<()> {
        for issue in issues {
            self.write(format!("{entity}.warnings.csv"), entity, key, issue, batch)?;
        }
        Ok(())
    }

    /// Copies into this run's files the lines of `entity` that the checkpoint of the interrupted
    /// run in `from` covers — carried-over lines (no batch) and those of its first `batches`
    /// batches — as carried-over lines. Returns the lines copied (rejects, warnings). A file
    /// without the `batch` column (an older version) is not copied: its rows cannot be told apart.
    pub fn carry(&self, from: &Path, entity: &str, batches: u64) -> std::io::Result<Carried> {
        let mut copied = (0, 0);
        let mut rejected_keys = std::collections::HashSet::new();
        let mut orphans: BTreeMap<String, u64> = BTreeMap::new();
        for (name, n) in [
            (format!("{entity}.csv"), &mut copied.0),
            (format!("{entity}.warnings.csv"), &mut copied.1),
        ] {
            let rejects = name.ends_with(".csv") && !name.ends_with(".warnings.csv");
            let mut r = match csv::Reader::from_path(from.join(&name)) {
                Ok(r) => r,
                Err(e) if matches!(e.kind(), csv::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::NotFound) =>
                {
                    continue;
                }
                Err(e) => return Err(std::io::Error::other(e)),
            };
            let headers = r.headers().map_err(std::io::Error::other)?.clone();
            if headers.iter().collect::<Vec<_>>() != HEADER {
                continue;
            }
            let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            for record in r.records() {
                // A torn last line (the run was killed mid-write) is past any checkpoint.
                let Ok(record) = record else { break };
                if !covered(&record, batches) {
                    continue;
                }
                let w = self.file(&mut files, &name)?;
                let mut fields: [&str; 8] = [""; 8];
                for (i, f) in fields.iter_mut().enumerate().take(7) {
                    *f = record.get(i).unwrap_or_default();
                }
                w.record(fields)?;
                *n += 1;
                if rejects && fields[2] == Stage::Embed.as_str() && fields[3] == RULE_ORPHAN_CHILD {
                    *orphans.entry(fields[4].to_string()).or_default() += 1;
                } else if rejects {
                    rejected_keys.insert(fields[1].to_string());
                }
            }
        }
        Ok(Carried {
            lines: copied.0,
            warnings: copied.1,
            rejected_rows: rejected_keys.len() as u64,
            orphans,
        })
    }

    /// Sets apart the lines of `entity` past its step's checkpoint — those of batch `batches` and
    /// later — into `read-again/` (a step that stopped before its end: the run that resumes it
    /// reads those rows again and records them in its own files, so each row is counted once).
    /// The files keep the lines the checkpoint covers (carried-over ones included).
    pub fn set_apart(&self, entity: &str, batches: u64) -> std::io::Result<SetApart> {
        let mut out = SetApart::default();
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        for name in [format!("{entity}.csv"), format!("{entity}.warnings.csv")] {
            if let Some(mut w) = files.remove(&name) {
                w.flush()?;
            }
            let path = self.dir.join(&name);
            if split(&self.dir, &name, batches, &mut out)? {
                // Anything recorded later for the entity goes after these lines.
                files.insert(name, Records::append(&path)?);
            }
        }
        Ok(out)
    }

    /// Removes this run's files of `entity` (rejects and warnings): lines carried for a step
    /// that never began, which the run that resumes that step carries again (adv38 F3).
    pub fn discard(&self, entity: &str) -> std::io::Result<()> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        for name in [format!("{entity}.csv"), format!("{entity}.warnings.csv")] {
            files.remove(&name);
            match std::fs::remove_file(self.dir.join(&name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn flush(&self) -> std::io::Result<()> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        for w in files.values_mut() {
            w.flush()?;
        }
        Ok(())
    }

    /// Flushes and syncs every file to disk: what is recorded so far survives a crash (called
    /// before a checkpoint moves past the rows).
    pub fn sync(&self) -> std::io::Result<()> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        for w in files.values_mut() {
            w.flush()?;
            w.file.sync_data()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::{Issue, Stage};

    #[test]
    fn the_file_holds_whole_records_whenever_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let w = RejectsWriter::new(dir.path());
        let path = dir.path().join("e.csv");
        // Long values with quotes and newlines: a record is ~700 bytes, never aligned with 64 KiB.
        for n in 0..2000 {
            let issue = Issue::error(
                Stage::Validate,
                "rule",
                "path",
                format!(
                    "message {n} \"quoted\"\nsecond line {}",
                    "m".repeat(n % 300)
                ),
                "v".repeat(150),
            );
            w.reject("e", &format!("key {n}"), &[issue]).unwrap();
            if n % 97 == 0 {
                // What a process killed now would leave: parses, whole records only.
                let bytes = std::fs::read(&path).unwrap_or_default();
                let mut r = csv::Reader::from_reader(bytes.as_slice());
                let rows = r.records().collect::<Result<Vec<_>, _>>().unwrap();
                assert!(rows.iter().all(|x| x.len() == 8), "after record {n}");
            }
        }
        w.sync().unwrap();
        let mut r = csv::Reader::from_path(&path).unwrap();
        assert_eq!(r.records().count(), 2000);
    }

    fn lines(path: &Path) -> Vec<(String, String)> {
        let mut r = csv::Reader::from_path(path).unwrap();
        r.records()
            .map(|x| {
                let x = x.unwrap();
                (x[1].to_string(), x[7].to_string())
            })
            .collect()
    }

    #[test]
    fn lines_past_the_checkpoint_are_set_apart_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let w = RejectsWriter::new(dir.path());
        let bad = |field: &str| {
            Issue::error(
                Stage::Validate,
                "required",
                field,
                "missing".into(),
                String::new(),
            )
        };
        // A carried-over line (no batch), rows of batches 0..4, one rejected on two fields.
        w.reject("e", "k0", &[bad("a")]).unwrap();
        for b in 0..4u64 {
            w.reject_in("e", &format!("k{}", b + 1), &[bad("a"), bad("b")], Some(b))
                .unwrap();
        }
        let orphan = Issue::error(
            Stage::Embed,
            RULE_ORPHAN_CHILD,
            "kids",
            "no parent".into(),
            String::new(),
        );
        w.reject_in("e", "c9", &[orphan], Some(3)).unwrap();
        let warn = Issue {
            severity: crate::mapping::spec::Severity::Warning,
            ..bad("x")
        };
        w.warn("e", "k7", &[&warn], Some(1)).unwrap();
        w.warn("e", "k8", &[&warn], Some(2)).unwrap();
        // The checkpoint covers batches 0 and 1.
        let apart = w.set_apart("e", 2).unwrap();
        assert_eq!(apart.rejected_rows, 2);
        assert_eq!(apart.lines, 4);
        assert_eq!(apart.warnings, 1);
        assert_eq!(apart.orphans.get("kids"), Some(&1));
        let kept = lines(&dir.path().join("e.csv"));
        let keys: Vec<&str> = kept.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["k0", "k1", "k1", "k2", "k2"]);
        let past = lines(&dir.path().join(READ_AGAIN_DIR).join("e.csv"));
        let keys: Vec<&str> = past.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["k3", "k3", "k4", "k4", "c9"]);
        assert_eq!(lines(&dir.path().join("e.warnings.csv")).len(), 1);
        assert_eq!(
            lines(&dir.path().join(READ_AGAIN_DIR).join("e.warnings.csv")),
            [("k8".to_string(), "2".to_string())]
        );
        // A line recorded afterwards goes after the kept ones, not over them.
        w.reject("e", "k5", &[bad("a")]).unwrap();
        w.sync().unwrap();
        assert_eq!(lines(&dir.path().join("e.csv")).len(), 6);
    }
}
