//! Files into MongoDB GridFS: one file per row, its `_id` the row's document id, streamed from
//! disk a chunk at a time (memory stays at one read buffer and one GridFS chunk, whatever the
//! file's size). Before the upload the file on disk is checked against what the row records (a
//! missing file, a size or checksum that differs: the row is refused with its rule); after it,
//! the files document's length must be the file's size. A file already complete with the same
//! length and sha256 is left as it is (its metadata refreshed); anything else under its id — a
//! partial upload a killed run left, an older version — is deleted first, chunks included, so
//! no orphan chunk stays.
//!
//! This module must not know any mapping's names: what it needs comes in a [`BucketSpec`] and
//! one [`FileRef`] per document.

use std::path::{Component, Path, PathBuf};

use bson::{Bson, Document, RawDocumentBuf, doc};
use futures::AsyncWriteExt;
use mongodb::Database;
use mongodb::gridfs::GridFsBucket;
use mongodb::options::GridFsBucketOptions;
use sha2::Digest;
use tokio::io::AsyncReadExt;

use super::mongodb::{BatchResult, DocError, MongoError};
use crate::mapping::spec::ChecksumAlgorithm;

/// A row's file is missing or unreadable (or its path is empty).
pub const RULE_MISSING: &str = "file_missing";
/// A row's file differs from the size or checksum the row records.
pub const RULE_CHECKSUM: &str = "file_checksum";
/// A row's path escapes the files root (absolute, or through `..`).
pub const RULE_PATH: &str = "file_path";
/// The target's record of an uploaded file disagrees with the file (it was removed again).
pub const RULE_UPLOAD: &str = "file_upload";

/// The files document's field holding the sha256 (hex) of the bytes cutover uploaded: a file
/// without it (an upload cut short after the files document) is uploaded again.
pub const SHA256_FIELD: &str = "sha256";
/// The same of the md5, when the mapping's checksum is md5.
pub const MD5_FIELD: &str = "md5";

/// Bytes read from disk at a time.
const READ_BUFFER: usize = 256 * 1024;

/// Where a stage's files go and where they come from.
#[derive(Debug, Clone)]
pub struct BucketSpec {
    pub name: String,
    /// The collection of each file's document (`{_id, fileId, …metadata}`), if any.
    pub documents: Option<String>,
    pub chunk_size: u32,
    pub algorithm: ChecksumAlgorithm,
    /// The directory the rows' paths are relative to.
    pub root: PathBuf,
    /// A file recorded complete is taken as it is only when the bytes GridFS holds hash to the
    /// file's (`migrate --recheck-files`: each is read back), not only its record.
    pub recheck: bool,
}

impl BucketSpec {
    pub fn files(&self) -> String {
        files_collection(&self.name)
    }
    pub fn chunks(&self) -> String {
        chunks_collection(&self.name)
    }
}

pub fn files_collection(bucket: &str) -> String {
    format!("{bucket}.files")
}

pub fn chunks_collection(bucket: &str) -> String {
    format!("{bucket}.chunks")
}

/// What one row says of its file (the values of the `[file]` columns).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileRef {
    /// Relative to the files root; `None` when the row holds NULL.
    pub path: Option<String>,
    /// The files document's `filename` (default: the path's last part).
    pub name: Option<String>,
    pub size: Option<i64>,
    /// Hex, as the row records it.
    pub checksum: Option<String>,
    pub mime: Option<String>,
}

impl FileRef {
    /// What `row` says of its file, from the columns of the `[file]` table.
    pub fn of_row(f: &crate::mapping::plan::FilePlan, row: &[crate::source::Value]) -> FileRef {
        use crate::source::Value;
        let text = |i: Option<usize>| match i.map(|i| (i, &row[i])) {
            Some((i, Value::Text(t))) if f.padded.contains(&i) => {
                Some(t.trim_end_matches(' ').to_string())
            }
            Some((_, Value::Text(t))) => Some(t.clone()),
            _ => None,
        };
        let size = match f.size.map(|i| &row[i]) {
            Some(Value::Int32(n)) => Some(i64::from(*n)),
            Some(Value::Int64(n)) => Some(*n),
            _ => None,
        };
        FileRef {
            path: text(Some(f.path)),
            name: text(f.name),
            size,
            checksum: text(f.checksum),
            mime: text(f.mime),
        }
    }
}

/// Why `root` cannot be a files root: it does not exist, or is no directory.
pub fn root_problem(root: &Path) -> Option<String> {
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(format!(
            "the files root {} is not a directory",
            root.display()
        )),
        Err(e) => Some(format!(
            "the files root {} cannot be read ({e}): every row's file would be missing — check the path (--files-root, CUTOVER_FILES_ROOT or [files] root) and that it is mounted",
            root.display()
        )),
    }
}

/// `rel` under `root`, or why it is not a path there (absolute, or climbing out with `..`).
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf, String> {
    if rel.is_empty() {
        return Err("the path is empty".into());
    }
    let p = Path::new(rel);
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "the path {rel:?} has a `..` part: a row's path may not use `..` (it could climb out of the files root)"
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "the path {rel:?} is absolute: paths are relative to the files root"
                ));
            }
        }
    }
    Ok(root.join(p))
}

/// Hex text of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A file's size, sha256 and (when asked) md5, as read from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Digests {
    pub len: u64,
    pub sha256: String,
    pub md5: Option<String>,
}

impl Digests {
    /// The checksum of `algorithm`.
    pub fn of(&self, algorithm: ChecksumAlgorithm) -> Option<&str> {
        match algorithm {
            ChecksumAlgorithm::Sha256 => Some(&self.sha256),
            ChecksumAlgorithm::Md5 => self.md5.as_deref(),
        }
    }
}

/// Running hashes of a stream of bytes.
struct Hashers {
    len: u64,
    sha256: sha2::Sha256,
    md5: Option<md5::Md5>,
}

impl Hashers {
    fn new(algorithm: ChecksumAlgorithm) -> Hashers {
        Hashers::with_md5(algorithm == ChecksumAlgorithm::Md5)
    }
    fn with_md5(md5: bool) -> Hashers {
        Hashers {
            len: 0,
            sha256: sha2::Sha256::new(),
            md5: md5.then(md5::Md5::new),
        }
    }
    fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.sha256.update(bytes);
        if let Some(m) = &mut self.md5 {
            m.update(bytes);
        }
    }
    fn finish(self) -> Digests {
        Digests {
            len: self.len,
            sha256: hex(&self.sha256.finalize()),
            md5: self.md5.map(|m| hex(&m.finalize())),
        }
    }
}

/// Reads the file at `path` through, a buffer at a time.
pub async fn digest_file(path: &Path, algorithm: ChecksumAlgorithm) -> std::io::Result<Digests> {
    digest_file_md5(path, algorithm == ChecksumAlgorithm::Md5).await
}

/// [`digest_file`], with the md5 whenever `md5` (Appwrite's file signature is one).
pub async fn digest_file_md5(path: &Path, md5: bool) -> std::io::Result<Digests> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut h = Hashers::with_md5(md5);
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// Why the file on disk is not the one the row records, as (rule, message); `None` when it is.
pub fn disagreement(
    file: &FileRef,
    path: &str,
    found: &Digests,
    algorithm: ChecksumAlgorithm,
) -> Option<(&'static str, String)> {
    if let Some(size) = file.size
        && u64::try_from(size).ok() != Some(found.len)
    {
        return Some((
            RULE_CHECKSUM,
            format!(
                "{path}: the row records a size of {size} bytes, the file on disk has {}",
                found.len
            ),
        ));
    }
    if let Some(want) = &file.checksum {
        let have = found.of(algorithm).unwrap_or_default();
        if !want.trim().eq_ignore_ascii_case(have) {
            return Some((
                RULE_CHECKSUM,
                format!(
                    "{path}: the row records {} {}, the file on disk has {have}",
                    algorithm.as_str(),
                    want.trim()
                ),
            ));
        }
    }
    None
}

/// The file a row names, checked as the upload checks it before sending a byte: its path under
/// `root`, and the digests of what is on disk; or the reject (rule, message) the row gets.
pub async fn inspect(
    root: &Path,
    file: &FileRef,
    algorithm: ChecksumAlgorithm,
) -> Result<(PathBuf, Digests), (&'static str, String)> {
    inspect_digests(root, file, algorithm, algorithm == ChecksumAlgorithm::Md5).await
}

/// [`inspect`], with the md5 of the file always (what Appwrite Storage's signature is).
pub async fn inspect_with_md5(
    root: &Path,
    file: &FileRef,
    algorithm: ChecksumAlgorithm,
) -> Result<(PathBuf, Digests), (&'static str, String)> {
    inspect_digests(root, file, algorithm, true).await
}

async fn inspect_digests(
    root: &Path,
    file: &FileRef,
    algorithm: ChecksumAlgorithm,
    md5: bool,
) -> Result<(PathBuf, Digests), (&'static str, String)> {
    let Some(rel) = file.path.as_deref() else {
        return Err((
            RULE_MISSING,
            "the row names no file (its path is NULL)".into(),
        ));
    };
    let path = regular_file(root, rel).await?;
    let found = digest_file_md5(&path, md5).await.map_err(|e| {
        (
            RULE_MISSING,
            format!("{rel}: cannot read {}: {e}", path.display()),
        )
    })?;
    if let Some(problem) = disagreement(file, rel, &found, algorithm) {
        return Err(problem);
    }
    Ok((path, found))
}

/// Where the row's path `rel` leads under `root`, when it is a regular file there that can be
/// read without blocking: not a path with `..` or an absolute one, not a link out of the root,
/// not a directory, named pipe, device or socket (the rule and why otherwise). What the run
/// uploads from and verify reads (adv45 F7: verify blocked on a named pipe).
pub async fn regular_file(root: &Path, rel: &str) -> Result<PathBuf, (&'static str, String)> {
    let path = resolve(root, rel).map_err(|why| (RULE_PATH, why))?;
    // A symbolic link may lead out of the root: where the path really is must be under it.
    if let (Ok(real), Ok(real_root)) = (
        tokio::fs::canonicalize(&path).await,
        tokio::fs::canonicalize(root).await,
    ) && !real.starts_with(&real_root)
    {
        return Err((
            RULE_PATH,
            format!(
                "the path {rel:?} leads out of the files root (to {})",
                real.display()
            ),
        ));
    }
    // Only a regular file (followed through links): opening a named pipe blocks until a writer
    // comes, and a device or socket has no bytes to keep (adv25 F1: a FIFO hung the run).
    match tokio::fs::metadata(&path).await {
        Ok(m) if !m.is_file() => {
            return Err((
                RULE_MISSING,
                format!(
                    "{rel}: {} is not a regular file (a directory, a named pipe, a device or a socket)",
                    path.display()
                ),
            ));
        }
        _ => {}
    }
    Ok(path)
}

fn refused(index: usize, rule: &str, message: String) -> DocError {
    DocError {
        index,
        code: 0,
        code_name: rule.to_string(),
        message,
        transient: false,
    }
}

/// The ids of the uploads of `bucket` cut short: chunks without a files document (a kill -9
/// between the first chunk and the files document).
pub async fn partial_uploads(db: &Database, bucket: &str) -> Result<Vec<Bson>, MongoError> {
    use futures::TryStreamExt;
    let chunks = chunks_collection(bucket);
    let pipeline = vec![
        // Served by the chunks' (files_id, n) index: one key per file.
        doc! { "$sort": { "files_id": 1 } },
        doc! { "$group": { "_id": "$files_id" } },
        doc! { "$lookup": {
            "from": files_collection(bucket),
            "localField": "_id",
            "foreignField": "_id",
            "as": "file",
        } },
        doc! { "$match": { "file": { "$size": 0 } } },
        doc! { "$project": { "_id": 1 } },
    ];
    let mut cursor = db
        .collection::<Document>(&chunks)
        .aggregate(pipeline)
        .await
        .map_err(command(format!("find the partial uploads in {chunks}")))?;
    let mut ids = Vec::new();
    while let Some(d) = cursor
        .try_next()
        .await
        .map_err(command(format!("find the partial uploads in {chunks}")))?
    {
        if let Some(id) = d.get("_id") {
            ids.push(id.clone());
        }
    }
    Ok(ids)
}

fn command(op: String) -> impl FnOnce(mongodb::error::Error) -> MongoError {
    move |cause| MongoError::Command { op, cause }
}

fn bucket_of(db: &Database, spec: &BucketSpec) -> GridFsBucket {
    let mut options = GridFsBucketOptions::default();
    options.bucket_name = Some(spec.name.clone());
    options.chunk_size_bytes = Some(spec.chunk_size);
    db.gridfs_bucket(options)
}

/// Deletes the files `ids` of the bucket with their chunks (also chunks of uploads cut short,
/// which have no files document); returns how many files documents there were.
pub async fn delete_files(db: &Database, bucket: &str, ids: &[Bson]) -> Result<u64, MongoError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let chunks = chunks_collection(bucket);
    db.collection::<Document>(&chunks)
        .delete_many(doc! { "files_id": { "$in": ids.to_vec() } })
        .await
        .map_err(command(format!("delete from {chunks}")))?;
    let files = files_collection(bucket);
    let r = db
        .collection::<Document>(&files)
        .delete_many(doc! { "_id": { "$in": ids.to_vec() } })
        .await
        .map_err(command(format!("delete from {files}")))?;
    Ok(r.deleted_count)
}

/// [`delete_files`], and the files' documents when the bucket has a collection of them.
pub async fn delete_files_of(
    db: &Database,
    spec: &BucketSpec,
    ids: &[Bson],
) -> Result<u64, MongoError> {
    let n = delete_files(db, &spec.name, ids).await?;
    if let Some(c) = &spec.documents
        && !ids.is_empty()
    {
        db.collection::<Document>(c)
            .delete_many(doc! { "_id": { "$in": ids.to_vec() } })
            .await
            .map_err(command(format!("delete from {c}")))?;
    }
    Ok(n)
}

/// The document of a file in the bucket's collection of them: its `_id` and `fileId` the
/// file's id, then the mapped fields (its metadata).
/// What the bytes GridFS holds under `id` hash to (sha256, hex) and how many there are: read
/// back chunk by chunk (bounded memory), as `verify --full` and `--recheck-files` compare them.
pub async fn stored_sha256(
    db: &Database,
    bucket: &str,
    id: Bson,
) -> Result<(u64, String), MongoError> {
    let mut options = GridFsBucketOptions::default();
    options.bucket_name = Some(bucket.to_string());
    let b = db.gridfs_bucket(options);
    let op = format!("download from {bucket}");
    let mut stream = b
        .open_download_stream(id)
        .await
        .map_err(command(op.clone()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = futures::AsyncReadExt::read(&mut stream, &mut buf)
            .await
            .map_err(|e| MongoError::Reply(format!("{op}: {e}")))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        h.update(&buf[..n]);
    }
    Ok((len, hex(&h.finalize())))
}

pub fn file_document(id: &Bson, metadata: &Document) -> Document {
    let mut d = doc! { "_id": id.clone(), "fileId": id.clone() };
    for (k, v) in metadata {
        d.insert(k.clone(), v.clone());
    }
    d
}

/// Writes (replaces) the document of file `id` when the bucket has a collection of them.
async fn write_document(
    db: &Database,
    spec: &BucketSpec,
    id: &Bson,
    metadata: &Document,
) -> Result<(), MongoError> {
    let Some(c) = &spec.documents else {
        return Ok(());
    };
    db.collection::<Document>(c)
        .replace_one(doc! { "_id": id }, file_document(id, metadata))
        .upsert(true)
        .await
        .map_err(command(format!("write into {c}")))?;
    Ok(())
}

/// Uploads the file of each document (`files[i]` is `docs[i]`'s): the document's `_id` is the
/// file's, the rest of it the file's metadata. Rows whose file is missing, differs from what
/// they record or escapes the root are refused (with their rule); a server error fails the
/// batch (the retry loop sends it again: complete files are then found and left).
pub async fn write_files(
    db: &Database,
    spec: &BucketSpec,
    docs: &[RawDocumentBuf],
    files: &[FileRef],
) -> Result<BatchResult, MongoError> {
    let bucket = bucket_of(db, spec);
    let files_coll = db.collection::<Document>(&spec.files());
    let mut result = BatchResult::default();
    for (index, (raw, file)) in docs.iter().zip(files).enumerate() {
        let doc = raw
            .to_document()
            .map_err(|e| MongoError::Reply(format!("a document to write is not BSON: {e}")))?;
        let mut metadata = doc.clone();
        let Some(id) = metadata.remove("_id") else {
            return Err(MongoError::Reply("document without _id".into()));
        };
        let mapped_fields = metadata.clone();
        let (path, found) = match inspect(&spec.root, file, spec.algorithm).await {
            Ok(checked) => checked,
            Err((rule, message)) => {
                result.errors.push(refused(index, rule, message));
                continue;
            }
        };
        let rel = file.path.as_deref().unwrap_or_default();
        let filename = file_name(file);
        let mut fields = doc! { "filename": &filename, "metadata": &metadata };
        if let Some(mime) = &file.mime {
            fields.insert("contentType", mime);
        }
        // Complete already (same bytes): only what the row says of it is brought up to date.
        let existing = files_coll
            .find_one(doc! { "_id": &id })
            .await
            .map_err(command(format!("find in {}", spec.files())))?;
        // With --recheck-files, its bytes are read back too (adv34 F10: a chunk damaged in
        // place kept its record, so a re-run called it complete and `verify --full` did not).
        let same_bytes = async {
            if !spec.recheck {
                return Ok(true);
            }
            let (len, sha) = stored_sha256(db, &spec.name, id.clone()).await?;
            Ok::<bool, MongoError>(len == found.len && sha == found.sha256)
        };
        if let Some(e) = &existing
            && complete(e, &found)
            && chunks_whole(db, spec, &id, e).await?
            && same_bytes.await?
        {
            // A row whose mime type is NULL now leaves none (adv45 F8: the old one stayed).
            let mut update = doc! { "$set": fields };
            if file.mime.is_none() {
                update.insert("$unset", doc! { "contentType": "" });
            }
            files_coll
                .update_one(doc! { "_id": &id }, update)
                .await
                .map_err(command(format!("update {}", spec.files())))?;
            write_document(db, spec, &id, &mapped_fields).await?;
            result.written += 1;
            result.files.unchanged += 1;
            continue;
        }
        // An older version, or an upload cut short (chunks without a files document, or a
        // files document without its checksum): gone first, chunks and all.
        delete_files(db, &spec.name, std::slice::from_ref(&id)).await?;
        let uploaded = match upload(&bucket, &id, &filename, &path, spec, metadata).await {
            Ok(d) => d,
            Err(Upload::Disk(e)) => {
                result.errors.push(refused(
                    index,
                    RULE_MISSING,
                    format!("{rel}: cannot read {}: {e}", path.display()),
                ));
                continue;
            }
            Err(Upload::Server(e)) => return Err(e),
        };
        // The bytes sent are the bytes checked (the file did not change meanwhile) and the
        // server's record says their length.
        let stored = files_coll
            .find_one(doc! { "_id": &id })
            .await
            .map_err(command(format!("find in {}", spec.files())))?;
        let length = stored.as_ref().and_then(length_of);
        if uploaded != found || length != Some(found.len) {
            delete_files_of(db, spec, std::slice::from_ref(&id)).await?;
            let message = if uploaded != found {
                format!(
                    "{rel}: the file changed while it was uploaded (sha256 {} before, {} sent); removed again",
                    found.sha256, uploaded.sha256
                )
            } else {
                format!(
                    "{rel}: GridFS records a length of {} bytes for the {} bytes sent; removed again",
                    length.map_or("no".to_string(), |l| l.to_string()),
                    found.len
                )
            };
            result.errors.push(refused(index, RULE_UPLOAD, message));
            continue;
        }
        let mut mark = doc! { SHA256_FIELD: &found.sha256 };
        if let Some(md5) = &found.md5 {
            mark.insert(MD5_FIELD, md5);
        }
        if let Some(mime) = &file.mime {
            mark.insert("contentType", mime);
        }
        files_coll
            .update_one(doc! { "_id": &id }, doc! { "$set": mark })
            .await
            .map_err(command(format!("update {}", spec.files())))?;
        // After the file is complete: a document never names a file that is not there.
        write_document(db, spec, &id, &mapped_fields).await?;
        result.written += 1;
        result.files.uploaded += 1;
        result.files.uploaded_bytes += found.len;
    }
    Ok(result)
}

/// The name a row's file gets: the row's name column, else the last part of its path.
pub fn file_name(file: &FileRef) -> String {
    let rel = file.path.as_deref().unwrap_or_default();
    file.name.clone().unwrap_or_else(|| {
        Path::new(rel)
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| rel.to_string())
    })
}

/// How many chunks a files document's file has: `ceil(length / chunkSize)`.
pub fn chunks_expected(d: &Document) -> Option<u64> {
    Some(length_of(d)?.div_ceil(chunk_size_of(d)?))
}

/// A files document's `chunkSize`: a positive whole number of any BSON number type, else `None`.
pub fn chunk_size_of(d: &Document) -> Option<u64> {
    match d.get("chunkSize") {
        Some(Bson::Int32(n)) => u64::try_from(*n).ok(),
        Some(Bson::Int64(n)) => u64::try_from(*n).ok(),
        Some(Bson::Double(n)) if *n >= 1.0 && n.fract() == 0.0 => Some(*n as u64),
        _ => None,
    }
    .filter(|n| *n > 0)
}

/// Whether the file `id` has every chunk its files document says (`n` from 0 to the last): a
/// file with a chunk gone is no complete file, whatever its record says (adv25 F3).
pub async fn chunks_whole(
    db: &Database,
    spec: &BucketSpec,
    id: &Bson,
    files_doc: &Document,
) -> Result<bool, MongoError> {
    let Some(want) = chunks_expected(files_doc) else {
        return Ok(false);
    };
    let chunks = spec.chunks();
    let have = db
        .collection::<Document>(&chunks)
        .count_documents(doc! { "files_id": id, "n": { "$gte": 0, "$lt": want as i64 } })
        .await
        .map_err(command(format!("count in {chunks}")))?;
    Ok(have == want)
}

/// A files document's `length`.
pub fn length_of(d: &Document) -> Option<u64> {
    match d.get("length")? {
        Bson::Int32(i) => u64::try_from(*i).ok(),
        Bson::Int64(i) => u64::try_from(*i).ok(),
        Bson::Double(f) if *f >= 0.0 => Some(*f as u64),
        _ => None,
    }
}

/// Whether the files document `d` is a complete upload of the bytes `found` describes.
fn complete(d: &Document, found: &Digests) -> bool {
    length_of(d) == Some(found.len)
        && d.get_str(SHA256_FIELD).is_ok_and(|s| s == found.sha256)
        && found
            .md5
            .as_deref()
            .is_none_or(|m| d.get_str(MD5_FIELD).is_ok_and(|s| s == m))
}

enum Upload {
    Disk(std::io::Error),
    Server(MongoError),
}

/// Streams the file at `path` into the bucket under `id`; the digests of the bytes sent.
async fn upload(
    bucket: &GridFsBucket,
    id: &Bson,
    filename: &str,
    path: &Path,
    spec: &BucketSpec,
    metadata: Document,
) -> Result<Digests, Upload> {
    let server = |op: &str| {
        let op = format!("{op} {} in {}", filename, spec.name);
        move |cause| Upload::Server(MongoError::Command { op, cause })
    };
    let mut f = tokio::fs::File::open(path).await.map_err(Upload::Disk)?;
    let mut stream = bucket
        .open_upload_stream(filename)
        .id(id.clone())
        .chunk_size_bytes(spec.chunk_size)
        .metadata(metadata)
        .await
        .map_err(server("open an upload of"))?;
    let mut h = Hashers::new(spec.algorithm);
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let n = match f.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                // The chunks written so far go.
                let _ = stream.abort().await;
                return Err(Upload::Disk(e));
            }
        };
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        if let Err(e) = stream.write_all(&buf[..n]).await {
            let _ = stream.abort().await;
            return Err(Upload::Server(MongoError::Reply(format!(
                "upload of {filename} into {}: {e}",
                spec.name
            ))));
        }
    }
    stream.close().await.map_err(|e| {
        Upload::Server(MongoError::Reply(format!(
            "upload of {filename} into {}: {e}",
            spec.name
        )))
    })?;
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_size_is_a_positive_whole_number() {
        let size = |v: Bson| chunk_size_of(&doc! { "chunkSize": v });
        assert_eq!(size(Bson::Int32(255)), Some(255));
        assert_eq!(size(Bson::Int64(261_120)), Some(261_120));
        assert_eq!(size(Bson::Double(255.0)), Some(255));
        assert_eq!(size(Bson::Double(255.5)), None);
        assert_eq!(size(Bson::Int32(0)), None);
        assert_eq!(size(Bson::Int64(-1)), None);
        assert_eq!(size(Bson::String("255".into())), None);
        let d = doc! { "length": 511i64, "chunkSize": 255 };
        assert_eq!(chunks_expected(&d), Some(3));
        assert_eq!(
            chunks_expected(&doc! { "length": 0, "chunkSize": 255 }),
            Some(0)
        );
    }

    #[test]
    fn paths_out_of_the_root_are_refused() {
        let root = Path::new("/data/files");
        assert_eq!(
            resolve(root, "a/b.pdf").unwrap(),
            Path::new("/data/files/a/b.pdf")
        );
        assert!(resolve(root, "../etc/passwd").is_err());
        assert!(resolve(root, "a/../../x").is_err());
        assert!(resolve(root, "/etc/passwd").is_err());
        assert!(resolve(root, "").is_err());
    }

    #[test]
    fn a_size_or_checksum_differing_names_both_values() {
        let found = Digests {
            len: 3,
            sha256: "ab".into(),
            md5: None,
        };
        let f = FileRef {
            size: Some(4),
            ..Default::default()
        };
        let (rule, m) = disagreement(&f, "x", &found, ChecksumAlgorithm::Sha256).unwrap();
        assert_eq!(rule, RULE_CHECKSUM);
        assert!(m.contains('4') && m.contains('3'), "{m}");
        let f = FileRef {
            size: Some(3),
            checksum: Some("AB".into()),
            ..Default::default()
        };
        assert_eq!(
            disagreement(&f, "x", &found, ChecksumAlgorithm::Sha256),
            None
        );
        let f = FileRef {
            checksum: Some("cd".into()),
            ..Default::default()
        };
        let (_, m) = disagreement(&f, "x", &found, ChecksumAlgorithm::Sha256).unwrap();
        assert!(m.contains("cd") && m.contains("ab"), "{m}");
    }
}
