//! The rejects files: `rejects/<run-id>/<entity>.csv` for rejected rows and
//! `rejects/<run-id>/<entity>.warnings.csv` for rows written with warnings.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::transform::Issue;

const VALUE_MAX: usize = 200;
/// Records are gathered up to this many bytes before they go to the file, in whole records.
const PENDING_MAX: usize = 64 * 1024;

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

    fn record(&mut self, fields: [&str; 7]) -> std::io::Result<()> {
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

    fn write(&self, file: String, entity: &str, key: &str, issue: &Issue) -> std::io::Result<()> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if !files.contains_key(&file) {
            std::fs::create_dir_all(&self.dir)?;
            let mut w = Records::create(&self.dir.join(&file))?;
            w.record([
                "entity",
                "source_key",
                "stage",
                "rule",
                "path",
                "message",
                "value",
            ])?;
            files.insert(file.clone(), w);
        }
        let w = files.get_mut(&file).expect("inserted above");
        let scrub = crate::redact::scrub_secrets;
        w.record([
            entity,
            &scrub(key),
            issue.stage.as_str(),
            &issue.rule,
            &issue.path,
            &scrub(&issue.message),
            &scrub(&truncate(&issue.value)),
        ])?;
        Ok(())
    }

    /// Records a rejected row (each error-severity issue is one line).
    pub fn reject(&self, entity: &str, key: &str, issues: &[Issue]) -> std::io::Result<()> {
        for issue in issues.iter().filter(|i| i.is_error()) {
            self.write(format!("{entity}.csv"), entity, key, issue)?;
        }
        Ok(())
    }

    /// Records the warnings of a written row.
    pub fn warn(&self, entity: &str, key: &str, issues: &[&Issue]) -> std::io::Result<()> {
        for issue in issues {
            self.write(format!("{entity}.warnings.csv"), entity, key, issue)?;
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
                assert!(rows.iter().all(|x| x.len() == 7), "after record {n}");
            }
        }
        w.sync().unwrap();
        let mut r = csv::Reader::from_path(&path).unwrap();
        assert_eq!(r.records().count(), 2000);
    }
}
