//! The rejects files: `rejects/<run-id>/<entity>.csv` for rejected rows and
//! `rejects/<run-id>/<entity>.warnings.csv` for rows written with warnings.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::transform::Issue;

const VALUE_MAX: usize = 200;

/// Writes reject and warning records; created lazily per entity, safe to share between tasks.
pub struct RejectsWriter {
    dir: PathBuf,
    files: Mutex<HashMap<String, csv::Writer<File>>>,
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
            let mut w = csv::Writer::from_path(self.dir.join(&file))?;
            w.write_record([
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
        w.write_record([
            entity,
            key,
            issue.stage.as_str(),
            &issue.rule,
            &issue.path,
            &issue.message,
            &truncate(&issue.value),
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
            w.get_ref().sync_data()?;
        }
        Ok(())
    }
}
