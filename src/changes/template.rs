//! `cutover changes new`: the next version's file, from a commented template.

use std::path::{Path, PathBuf};

use super::file::{self, FileError};

/// The templates `changes new --template` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
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

const HEAD: &str = r#"# Change {version}: {name}
# The format is documented in pipelines/changes/README.md. Edit freely until the change is applied:
# once applied, its checksum is recorded and `changes up` refuses a modified file.
version = {version}
name = {name_toml}
description = ""
author = ""
# true: every operation runs in one multi-document transaction (MongoDB replica set); the
# document operations may run in one, those on indexes, collections and validators may not
# (create_index, drop_index, create_collection, drop_collection, set_validator,
# copy_collection, command).
transaction = false
"#;

const EMPTY: &str = r#"
# Operations, applied in order by `changes up`. For example:
#
# [[up]]
# op = "set"
# collection = "patients"
# filter = { isActive = false }
# fields = { archived = true }
#
# Without [[down]], `changes down` runs the inverse of each up operation, last first; documents
# an operation rewrites are backed up first and put back by down.
"#;

const ADD_FIELD: &str = r#"
# Sets `field` where it is missing (documents that have it are left alone). Down removes it again
# from the documents it was added to, where it still holds the default.
[[up]]
op = "add_field"
collection = "patients"
field = "preferences.language"
default = "en"
# Only documents matching this filter (extended JSON as TOML):
# filter = { isActive = true }
"#;

const RENAME_FIELD: &str = r#"
# Renames `from` to `to` where `from` exists; refused when a document has both. Down renames back
# the documents it renamed, where `to` still holds the old value.
[[up]]
op = "rename_field"
collection = "patients"
from = "medicalInfo.notes"
to = "medicalInfo.remarks"
"#;

const INDEX: &str = r#"
# Creates an index (refused when one of that name exists). Keys in order, `-field` descending.
# Down drops it (and the collection, when the index created it and it is still empty).
[[up]]
op = "create_index"
collection = "patients"
keys = ["lastName", "firstName"]
# name = "patients_by_name"          # default: MongoDB's own, lastName_1_firstName_1
# unique = true
# partial_filter = { isActive = true }
# expire_after_seconds = 86400       # a TTL index (one date key)
"#;

const SEED: &str = r#"
# Inserts documents, each with its `_id` (refused when one is there already). Values are
# extended JSON written as TOML: { "$date" = "2026-01-01T00:00:00Z" }, { "$oid" = "…" }.
# Down deletes them by _id (and drops the collection when the insert created it).
[[up]]
op = "insert"
collection = "lookups"
documents = [
  { _id = "example-1", label = "Example one" },
  { _id = "example-2", label = "Example two" },
]
"#;

const TRANSFORM: &str = r#"
# Rewrites the documents matching `filter` with an update pipeline: stages $set / $addFields /
# $unset / $project / $replaceWith / $replaceRoot, in extended JSON written as TOML. Every document
# it touches is backed up first; down puts each back where it is still exactly as the transform
# left it (a document edited since is left alone, and counted).
[[up]]
op = "transform"
collection = "patients"
filter = { "contactInfo.phone" = { "$regex" = "^00" } }
pipeline = [
  { "$set" = { "contactInfo.phone" = { "$concat" = ["+", { "$substrCP" = ["$contactInfo.phone", 2, 20] }] } } },
]
"#;

const ARCHIVE: &str = r#"
# Moves the documents matching `filter` (required) into collection `to`; refused when one of them
# is in `to` already. Down moves them back (where `to` still holds them as moved, and their place
# is free), and drops `to` when the archive created it and it is empty again.
[[up]]
op = "archive"
collection = "sessions"
to = "sessionsArchive"
filter = { expiresAt = { "$lt" = { "$date" = "2026-01-01T00:00:00Z" } } }
"#;

const SCHEMA: &str = r#"
# Sets a collection's validator: a $jsonSchema (or any query) every inserted or updated document
# must satisfy. `validation_level` strict | moderate (existing invalid documents may still be
# updated) | off; `validation_action` error | warn. Down puts the previous validator back.
# (A new collection with a validator: op = "create_collection" takes the same keys.)
[[up]]
op = "set_validator"
collection = "immunizations"
validation_level = "moderate"
validation_action = "error"
validator = { "$jsonSchema" = { bsonType = "object", required = ["patientId", "vaccineCode"], properties = { patientId = { bsonType = "string" }, vaccineCode = { bsonType = "string" } } } }
"#;

const SANITIZE: &str = r#"
# Cleans string values at the listed fields (dotted paths; through arrays, each element) of the
# documents matching `filter` (optional): normalize = "NFC" | "NFD" | "NFKC" | "NFKD", then
# trim = true (leading/trailing white space), then lower = true. Every document with a string
# there is backed up first; down puts each back where it is still exactly as cleaned.
[[up]]
op = "sanitize_strings"
collection = "users"
fields = ["email"]
trim = true
lower = true
# normalize = "NFC"
# filter = { isActive = true }
"#;

const AW_HEAD: &str = r#"# Change {version}: {name} (Appwrite)
# The format is documented in pipelines/changes/README.md. Edit freely until the change is applied:
# once applied, its checksum is recorded and `changes up` refuses a modified file.
version = {version}
name = {name_toml}
description = ""
author = ""
# true: the row operations (insert, set, unset, update_references) run in one TablesDB
# transaction; column, index and table operations cannot run in one.
transaction = false
"#;

const AW_EMPTY: &str = r#"
# Appwrite operations, applied in order by `changes --target appwrite up`. For example:
#
# [[up]]
# op = "set"
# table = "patients"
# queries = [{ method = "equal", attribute = "isActive", values = [false] }]
# values = { archived = true }
#
# Without [[down]], `changes down` runs the inverse of each up operation, last first; rows an
# operation rewrites are backed up first and put back by down.
"#;

const AW_ADD_COLUMN: &str = r#"
# Adds a column (Appwrite's column types: string with a size, integer, float, boolean, datetime,
# email, url, ip, enum). Down removes it again.
[[up]]
op = "add_column"
table = "patients"
column = "preferredLanguage"
type = "string"
size = 8
default = "en"
"#;

const AW_RENAME_COLUMN: &str = r#"
# Renames a column. Down renames it back.
[[up]]
op = "rename_column"
table = "sessions"
from = "userAgent"
to = "clientUserAgent"
"#;

const AW_INDEX: &str = r#"
# Creates an index (`key`, `unique` or `fulltext`). Down drops it.
[[up]]
op = "create_index"
table = "patients"
key = "by_phone"
type = "key"
columns = ["phone"]
orders = ["ASC"]
"#;

const AW_SEED: &str = r#"
# Inserts rows (each with its `$id`); refused when a row with that id exists. Down deletes the
# rows it inserted that still hold what it wrote.
[[up]]
op = "insert"
table = "notificationTemplates"
rows = [
  { "$id" = "welcome", channel = "email", subject = "Welcome" },
]
"#;

const AW_SET: &str = r#"
# Sets values on the rows the queries match (Appwrite queries). The rows are backed up first;
# down puts back the values of those that still hold what it wrote.
[[up]]
op = "set"
table = "patients"
queries = [{ method = "isNull", attribute = "preferredLanguage" }]
values = { preferredLanguage = "en" }
"#;

const AW_SCHEMA: &str = r#"
# Creates a table with its columns and indexes. Down drops it again (refused while it holds rows).
[[up]]
op = "create_table"
table = "visits"
name = "Visits"
columns = [{ key = "patient", type = "string", size = 36, required = true }, { key = "at", type = "datetime" }]
indexes = [{ key = "by_patient", type = "key", columns = ["patient"] }]
"#;

impl Template {
    /// The body for an Appwrite target; `None` for a template that has no Appwrite operations.
    fn appwrite_body(self) -> Option<&'static str> {
        Some(match self {
            Template::Empty => AW_EMPTY,
            Template::AddField => AW_ADD_COLUMN,
            Template::RenameField => AW_RENAME_COLUMN,
            Template::Index => AW_INDEX,
            Template::Seed => AW_SEED,
            Template::Transform => AW_SET,
            Template::Schema => AW_SCHEMA,
            Template::Archive | Template::Sanitize => return None,
        })
    }

    fn body(self) -> &'static str {
        match self {
            Template::Empty => EMPTY,
            Template::AddField => ADD_FIELD,
            Template::RenameField => RENAME_FIELD,
            Template::Index => INDEX,
            Template::Seed => SEED,
            Template::Transform => TRANSFORM,
            Template::Archive => ARCHIVE,
            Template::Schema => SCHEMA,
            Template::Sanitize => SANITIZE,
        }
    }
}

/// `add avatar field` → `add-avatar-field`.
pub fn slug(name: &str) -> String {
    let mut s = String::new();
    // Letters and digits of any script (a file name holds them); at most SLUG_CHARS of them,
    // the name itself stays whole in the file (adv22 F4: a 300-character name gave no file).
    for c in name.trim().chars() {
        // Characters and bytes both bounded: a file name holds 255 bytes, and a letter takes up
        // to four (adv28 R9).
        if s.chars().count() >= SLUG_CHARS || s.len() + c.len_utf8() > SLUG_BYTES {
            break;
        }
        if c.is_alphanumeric() {
            s.extend(c.to_lowercase());
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    s.trim_end_matches('-').to_string()
}

/// The most characters a change file's name takes from the change's name, and bytes.
const SLUG_CHARS: usize = 60;
const SLUG_BYTES: usize = 160;

/// The text of a new change file.
pub fn render(template: Template, version: u64, name: &str) -> String {
    fill(format!("{}{}", HEAD, template.body()), version, name)
}

/// A template's text with its version and name: `{name}` in comments (on one line),
/// `{name_toml}` as a TOML string. The TOML string goes in last, so nothing of a name is read
/// as a placeholder.
fn fill(text: String, version: u64, name: &str) -> String {
    const HOLE: &str = "\u{0}name_toml\u{0}";
    text.replace("{name_toml}", HOLE)
        .replace("{version}", &version.to_string())
        .replace("{name}", &name.replace(['\r', '\n', '\u{0}'], " "))
        .replace(HOLE, &toml_string(name))
}

/// `text` as a TOML string, its quotes and backslashes escaped (adv37 F7: they became spaces).
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// The text of a new change file for an Appwrite target; `None` when the template has no
/// Appwrite operations (archive, sanitize).
pub fn render_appwrite(template: Template, version: u64, name: &str) -> Option<String> {
    Some(fill(
        format!("{}{}", AW_HEAD, template.appwrite_body()?),
        version,
        name,
    ))
}

/// Writes the next change file into `dir`: version `now` (UTC `YYYYMMDDhhmmss`), or one past the
/// newest existing version when that is later. Returns its path.
pub fn new_file(
    dir: &Path,
    name: &str,
    template: Template,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<PathBuf, FileError> {
    new_file_for(dir, name, template, now, false)
}

/// [`new_file`] with the template's operations for an Appwrite target when `appwrite`.
pub fn new_file_for(
    dir: &Path,
    name: &str,
    template: Template,
    now: chrono::DateTime<chrono::Utc>,
    appwrite: bool,
) -> Result<PathBuf, FileError> {
    if appwrite && template.appwrite_body().is_none() {
        return Err(FileError::Invalid {
            path: dir.to_path_buf(),
            message: format!(
                "the template {template:?} has no Appwrite operations: use empty, add-field, rename-field, index, seed, transform or schema"
            ),
        });
    }
    // Control characters, and the marks that reorder how text shows (a name that reads as
    // another: adv28 R9).
    let bidi = |c: &char| {
        matches!(
            *c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
    };
    if let Some(c) = name.chars().find(|c| c.is_control() || bidi(c)) {
        return Err(FileError::Invalid {
            path: dir.to_path_buf(),
            message: format!(
                "the name holds the control character {:?}: write it on one line, without control characters",
                c
            ),
        });
    }
    let slug = slug(name);
    if slug.is_empty() {
        return Err(FileError::Invalid {
            path: dir.to_path_buf(),
            message: format!("`{name}` gives no file name: use letters or digits"),
        });
    }
    let existing = file::load_dir(dir)?;
    let stamp: u64 = now.format("%Y%m%d%H%M%S").to_string().parse().unwrap_or(1);
    let mut version = match existing.last() {
        Some(c) if c.version >= stamp => c.version + 1,
        _ => stamp,
    };
    let io = |cause| FileError::Write {
        path: dir.to_path_buf(),
        cause,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    // Several at once (replicas, a script) must not take one version (adv30 T4: two files of
    // one version stopped every changes command): a version is claimed by creating its claim
    // file, which only one can; the claimant then looks whether a file of that version was
    // written since it read the directory, and writes its own before giving the claim back.
    let version_of = |name: &str| -> Option<u64> { name.split('_').next()?.parse().ok() };
    loop {
        let claim = dir.join(format!(".cutover-version-{version}.claim"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&claim)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                version += 1;
                continue;
            }
            Err(e) => return Err(io(e)),
        }
        let taken = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(Result::ok)
            .any(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.ends_with(".toml") && version_of(&name) == Some(version)
            });
        if taken {
            let _ = std::fs::remove_file(&claim);
            version += 1;
            continue;
        }
        let written = write_new(dir, version, &slug, name, template, appwrite);
        let _ = std::fs::remove_file(&claim);
        return written;
    }
}

/// Writes the change file of `version`.
fn write_new(
    dir: &Path,
    version: u64,
    slug: &str,
    name: &str,
    template: Template,
    appwrite: bool,
) -> Result<PathBuf, FileError> {
    let path = dir.join(format!("{version}_{slug}.toml"));
    let text = if appwrite {
        render_appwrite(template, version, name).unwrap_or_default()
    } else {
        render(template, version, name)
    };
    // The file must load as written: a template that does not is a bug here, not the user's.
    file::parse(&path, &text)?;
    // Written under a name no reader loads, then linked into place whole: another `changes new`
    // reading the directory meanwhile must never see a half-written file (CI run 35 failed on
    // an empty one).
    let partial = dir.join(format!(".cutover-version-{version}.partial"));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&partial)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::hard_link(&partial, &path));
    let _ = std::fs::remove_file(&partial);
    written.map_err(|cause| FileError::Write {
        path: path.clone(),
        cause,
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_loads_as_written() {
        for t in [
            Template::Empty,
            Template::AddField,
            Template::RenameField,
            Template::Index,
            Template::Seed,
            Template::Transform,
            Template::Archive,
            Template::Schema,
            Template::Sanitize,
        ] {
            // Quotes, a backslash, a line break and a placeholder's name are kept as written
            // (adv37 F7: they became spaces).
            let name = "a \"quoted\" C:\\path {name_toml}\nname";
            let text = render(t, 42, name);
            let c =
                file::parse(Path::new("42_x.toml"), &text).unwrap_or_else(|e| panic!("{t:?}: {e}"));
            assert_eq!(c.version, 42);
            assert_eq!(c.name, name, "{t:?}");
            assert_eq!(c.up.is_empty(), t == Template::Empty, "{t:?}");
            assert!(c.reversible());
            if let Some(text) = render_appwrite(t, 43, name) {
                let c = file::parse(Path::new("43_x.toml"), &text)
                    .unwrap_or_else(|e| panic!("{t:?} (Appwrite): {e}"));
                assert_eq!(c.name, name, "{t:?}");
                assert_eq!(c.up.is_empty(), t == Template::Empty, "{t:?}");
                assert!(c.reversible(), "{t:?}");
                assert!(
                    c.up.iter()
                        .all(|op| matches!(op, crate::changes::file::Op::Appwrite(_))),
                    "{t:?}"
                );
            }
        }
    }

    #[test]
    fn new_versions_follow_the_newest_file() {
        let dir = tempfile::tempdir().unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:30:00Z")
            .unwrap()
            .to_utc();
        let a = new_file(dir.path(), "Add avatar field!", Template::AddField, now).unwrap();
        assert!(a.ends_with("20261201103000_add-avatar-field.toml"), "{a:?}");
        let b = new_file(dir.path(), "second", Template::Empty, now).unwrap();
        assert!(b.ends_with("20261201103001_second.toml"), "{b:?}");
        assert_eq!(file::load_dir(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn files_made_at_once_get_versions_of_their_own() {
        // adv30 T4: ten at once gave two files one version.
        let dir = tempfile::tempdir().unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:30:00Z")
            .unwrap()
            .to_utc();
        // CI run 35: a reader saw another's file before its text was in it; rounds make the
        // window likelier to be hit.
        for round in 0..5 {
            let made: Vec<PathBuf> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..10)
                    .map(|i| {
                        let dir = dir.path();
                        s.spawn(move || {
                            new_file(dir, &format!("r{round}c{i}"), Template::Seed, now)
                                .unwrap_or_else(|e| panic!("r{round}c{i}: {e}"))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let loaded = file::load_dir(dir.path()).unwrap();
            assert_eq!(loaded.len(), 10 * (round + 1), "{made:?}");
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".cutover-version-")
            })
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn any_script_and_any_length_give_a_file_and_control_characters_are_refused() {
        // adv22 F4: a 300-character name failed ("File name too long"), letters outside ASCII
        // were refused as "no letters", a NUL wrote a file that did not load.
        let dir = tempfile::tempdir().unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:30:00Z")
            .unwrap()
            .to_utc();
        let long = "y".repeat(300);
        let p = new_file(dir.path(), &long, Template::Empty, now).unwrap();
        assert_eq!(
            p.file_name().unwrap().to_str().unwrap(),
            format!("20261201103000_{}.toml", "y".repeat(SLUG_CHARS))
        );
        let p = new_file(dir.path(), "Добавить поле", Template::AddField, now).unwrap();
        assert!(p.ends_with("20261201103001_добавить-поле.toml"), "{p:?}");
        let p = new_file(dir.path(), &"é".repeat(200), Template::Empty, now).unwrap();
        assert!(p.file_name().unwrap().len() < 255, "{p:?}");
        let loaded = file::load_dir(dir.path()).unwrap();
        assert_eq!(loaded.len(), 3);
        // The name is kept whole in the file.
        assert_eq!(loaded[0].name, long);
        let p = new_file(dir.path(), &"𝒜".repeat(60), Template::Empty, now).unwrap();
        assert!(p.file_name().unwrap().len() <= 255, "{p:?}");
        for bad in [
            "a\u{0}b",
            "tab\there",
            "two\nlines",
            "evil\u{202e}txt.exe",
            "a\u{061c}b",
            "line\u{2028}sep",
        ] {
            let e = new_file(dir.path(), bad, Template::Empty, now).unwrap_err();
            assert!(e.to_string().contains("control character"), "{bad:?}: {e}");
        }
        assert_eq!(file::load_dir(dir.path()).unwrap().len(), 4);
    }
}
