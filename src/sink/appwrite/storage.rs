//! Appwrite Storage: buckets and files. A file up to 5 MiB goes in one multipart request; a
//! bigger one in chunks of exactly 5 MiB (the last shorter), each with `Content-Range` and the
//! file's id in `x-appwrite-id` — read from disk one chunk at a time, so memory stays at one
//! chunk whatever the file's size. The server's record of a file (`sizeOriginal`, `signature` —
//! the md5 of its bytes —, `chunksUploaded` of `chunksTotal`) says whether it is complete.

use std::path::Path;

use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use super::error::AppwriteError;
use super::{AppwriteClient, tables::query_string};

/// Appwrite's chunk size: every chunk of a chunked upload but the last is exactly this long.
pub const CHUNK: u64 = 5 * 1024 * 1024;

/// A bucket as a mapping's `[file.appwrite]` asks for it (unset: Appwrite's default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketOptions {
    pub permissions: Option<Vec<String>>,
    pub file_security: Option<bool>,
    pub maximum_file_size: Option<u64>,
    pub allowed_file_extensions: Option<Vec<String>>,
    pub compression: Option<String>,
    pub encryption: Option<bool>,
    pub antivirus: Option<bool>,
}

/// The name of a bucket cutover creates for the run of `database`: buckets belong to the
/// project, so the name says which database's rows name its files.
pub fn bucket_name(id: &str, database: &str) -> String {
    format!("{id} [cutover database {database}]")
}

/// The database a bucket's name says its files are of, when cutover created it.
pub fn bucket_database(name: &str) -> Option<&str> {
    name.rsplit_once(" [cutover database ")
        .and_then(|(_, rest)| rest.strip_suffix(']'))
}

/// Creates the bucket unless it exists; returns the server's record of it (its settings are
/// what Storage enforces: an existing bucket is left as it is) and whether this call created
/// it. A bucket cutover created for
/// another database is refused: buckets belong to the project, and a rehearsal into another
/// database would share (and its rollback empty) the files the other database's rows name.
pub async fn ensure_bucket(
    client: &AppwriteClient,
    id: &str,
    database: &str,
    options: &BucketOptions,
) -> Result<(Value, bool), AppwriteError> {
    if let Some(b) = bucket(client, id).await? {
        return match b["name"].as_str().and_then(bucket_database) {
            Some(other) if other != database => Err(AppwriteError::client(
                super::error::ClientKind::Setup,
                format!(
                    "the Storage bucket `{id}` holds the files of database `{other}` (buckets belong to the project): give this mapping's [file] another `bucket` for database `{database}`"
                ),
            )),
            _ => Ok((b, false)),
        };
    }
    let mut body = json!({ "bucketId": id, "name": bucket_name(id, database) });
    let o = options;
    if let Some(p) = &o.permissions {
        body["permissions"] = json!(p);
    }
    if let Some(v) = o.file_security {
        body["fileSecurity"] = json!(v);
    }
    if let Some(v) = o.maximum_file_size {
        body["maximumFileSize"] = json!(v);
    }
    if let Some(v) = &o.allowed_file_extensions {
        body["allowedFileExtensions"] = json!(v);
    }
    if let Some(v) = &o.compression {
        body["compression"] = json!(v);
    }
    if let Some(v) = o.encryption {
        body["encryption"] = json!(v);
    }
    if let Some(v) = o.antivirus {
        body["antivirus"] = json!(v);
    }
    match client
        .call(reqwest::Method::POST, "/storage/buckets", Some(&body))
        .await
    {
        Ok(b) => Ok((b, true)),
        // Created meanwhile (another process): whose it is is asked again.
        Err(e) if e.status() == Some(409) => {
            Box::pin(ensure_bucket(client, id, database, options)).await
        }
        Err(e) => Err(e),
    }
}

/// The server's record of bucket `id`, if there is one.
pub async fn bucket(client: &AppwriteClient, id: &str) -> Result<Option<Value>, AppwriteError> {
    match client
        .call(
            reqwest::Method::GET,
            &format!("/storage/buckets/{id}"),
            None,
        )
        .await
    {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => Err(e),
    }
}

/// What Appwrite Storage checks of a file before it takes a byte of it (`createFile`, every
/// request of a chunked upload): the file's extension against the bucket's
/// `allowedFileExtensions` (empty: any), then its whole size against `maximumFileSize`
/// (`storage_file_type_unsupported`, `storage_invalid_file_size`, both status 400). The run,
/// its dry run and `check` refuse such a row with [`BucketLimits::refusal`] before sending
/// anything, so all three count the same rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BucketLimits {
    pub bucket: String,
    /// Bytes; `None`: not known beforehand (a bucket the run creates without the mapping's
    /// `maximum_file_size` gets the server's own limit, `_APP_STORAGE_LIMIT`).
    pub maximum_file_size: Option<u64>,
    pub allowed_file_extensions: Vec<String>,
    /// Where the limits come from: the existing bucket's settings (`None`: the mapping's, for
    /// the bucket the run creates), with the mapping's own when they differ, to say so.
    pub existing: Option<MappingAsks>,
}

/// The mapping's `[file.appwrite]` limits, kept beside an existing bucket's that differ.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MappingAsks {
    pub maximum_file_size: Option<u64>,
    pub allowed_file_extensions: Option<Vec<String>>,
}

impl BucketLimits {
    /// The limits of the bucket the run creates from the mapping's options.
    pub fn of_options(id: &str, o: &BucketOptions) -> BucketLimits {
        BucketLimits {
            bucket: id.to_string(),
            maximum_file_size: o.maximum_file_size,
            allowed_file_extensions: o.allowed_file_extensions.clone().unwrap_or_default(),
            existing: None,
        }
    }

    /// The limits of a bucket as the server records them: an existing bucket's are what
    /// Storage enforces whatever the mapping asks (`created`: the run made it from the
    /// mapping's options just now, so the mapping's they are).
    pub fn of_record(id: &str, record: &Value, o: &BucketOptions, created: bool) -> BucketLimits {
        let mut limits = BucketLimits::of_bucket(id, record, o);
        if created {
            limits.existing = None;
        }
        limits
    }

    /// The limits of an existing bucket (the server's record of it), which are what Storage
    /// enforces whatever the mapping asks.
    pub fn of_bucket(id: &str, record: &Value, o: &BucketOptions) -> BucketLimits {
        let maximum_file_size = record["maximumFileSize"].as_u64();
        let allowed_file_extensions: Vec<String> = record["allowedFileExtensions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let max_differs = o
            .maximum_file_size
            .is_some_and(|m| Some(m) != maximum_file_size);
        let extensions_differ = o
            .allowed_file_extensions
            .as_ref()
            .is_some_and(|a| *a != allowed_file_extensions);
        BucketLimits {
            bucket: id.to_string(),
            maximum_file_size,
            allowed_file_extensions,
            existing: Some(MappingAsks {
                maximum_file_size: o.maximum_file_size.filter(|_| max_differs),
                allowed_file_extensions: o
                    .allowed_file_extensions
                    .clone()
                    .filter(|_| extensions_differ),
            }),
        }
    }

    /// What an existing bucket holds otherwise than the mapping's `[file.appwrite]` asks (the
    /// run leaves the bucket as it is), as a sentence; `None` when nothing differs.
    pub fn differences(&self) -> Option<String> {
        let asks = self.existing.as_ref()?;
        let mut parts = Vec::new();
        if let Some(m) = asks.maximum_file_size {
            parts.push(format!(
                "maximumFileSize {} (the mapping asks {m})",
                self.maximum_file_size
                    .map_or("unset".to_string(), |v| v.to_string())
            ));
        }
        if let Some(a) = &asks.allowed_file_extensions {
            parts.push(format!(
                "allowedFileExtensions {:?} (the mapping asks {a:?})",
                self.allowed_file_extensions
            ));
        }
        (!parts.is_empty()).then(|| {
            format!(
                "the Storage bucket `{}` exists with {}: the run leaves an existing bucket as it is, and Appwrite enforces the bucket's settings",
                self.bucket,
                parts.join(" and ")
            )
        })
    }

    /// Why Storage refuses the upload of a file named `name` of `len` bytes (the extension
    /// first, as Appwrite checks it first), as the message of the row's `file_upload` reject.
    pub fn refusal(&self, name: &str, len: u64) -> Option<String> {
        let whose = match &self.existing {
            Some(_) => format!("the existing bucket `{}`", self.bucket),
            None => format!("the bucket `{}`", self.bucket),
        };
        if !self.allowed_file_extensions.is_empty() {
            let ext = extension(name);
            if !self.allowed_file_extensions.iter().any(|a| a == ext) {
                let what = if ext.is_empty() {
                    format!("{name:?} has no extension, which is not")
                } else {
                    format!("the extension {ext:?} of {name:?} is not")
                };
                return Some(format!(
                    "{what} among the allowedFileExtensions {:?} of {whose} (Appwrite compares the part of the name after its last dot, case-sensitively): Appwrite Storage would refuse it (storage_file_type_unsupported)",
                    self.allowed_file_extensions
                ));
            }
        }
        if let Some(max) = self.maximum_file_size
            && len > max
        {
            return Some(format!(
                "{name:?} is {len} bytes, over the maximumFileSize of {max} bytes of {whose}: Appwrite Storage would refuse it (storage_invalid_file_size)"
            ));
        }
        None
    }
}

/// The extension Appwrite Storage checks of an uploaded file's name, as PHP's
/// `pathinfo($name, PATHINFO_EXTENSION)` gives it: the part after the last dot of the name's
/// last `/`-separated part (trailing slashes ignored), as it is (no case folding); empty when
/// that part has no dot (`noext`) or ends with one (`name.`). `.bin` is extension `bin`.
pub fn extension(name: &str) -> &str {
    let base = name.trim_end_matches('/');
    let base = base.rsplit_once('/').map_or(base, |(_, b)| b);
    base.rsplit_once('.').map_or("", |(_, e)| e)
}

/// The server's record of a file, if there is one.
pub async fn file(
    client: &AppwriteClient,
    bucket: &str,
    id: &str,
) -> Result<Option<Value>, AppwriteError> {
    match client
        .call(
            reqwest::Method::GET,
            &format!("/storage/buckets/{bucket}/files/{id}"),
            None,
        )
        .await
    {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes a file (complete or partial); whether it was there.
pub async fn delete_file(
    client: &AppwriteClient,
    bucket: &str,
    id: &str,
) -> Result<bool, AppwriteError> {
    match client
        .call(
            reqwest::Method::DELETE,
            &format!("/storage/buckets/{bucket}/files/{id}"),
            None,
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.is_missing() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every file id of the bucket (none when the bucket does not exist), a page at a time.
pub async fn file_ids(client: &AppwriteClient, bucket: &str) -> Result<Vec<String>, AppwriteError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = vec![json!({ "method": "limit", "values": [1000] })];
        if let Some(a) = &after {
            q.push(json!({ "method": "cursorAfter", "values": [a] }));
        }
        let page = match client
            .call(
                reqwest::Method::GET,
                &format!("/storage/buckets/{bucket}/files?{}", query_string(&q)),
                None,
            )
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_missing() => return Ok(out),
            Err(e) => return Err(e),
        };
        let ids: Vec<String> = page["files"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f["$id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let Some(last) = ids.last().cloned() else {
            return Ok(out);
        };
        let full = ids.len() >= 1000;
        out.extend(ids);
        if !full {
            return Ok(out);
        }
        after = Some(last);
    }
}

/// Whether the server's record says the file is complete, `len` bytes with md5 `md5`.
pub fn complete(record: &Value, len: u64, md5: &str) -> bool {
    record["sizeOriginal"].as_u64() == Some(len)
        && record["signature"].as_str() == Some(md5)
        && record["chunksUploaded"].as_u64() == record["chunksTotal"].as_u64()
}

/// A row whose file's permission cannot be filled (a placeholder's value null or missing).
pub const RULE_PERMISSION: &str = "file_permission";

/// Whether the server's record of a file holds exactly the permissions `want` (in any order).
pub fn same_permissions(record: &Value, want: &[String]) -> bool {
    let mut have: Vec<&str> = record["$permissions"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut want: Vec<&str> = want.iter().map(String::as_str).collect();
    have.sort_unstable();
    have.dedup();
    want.sort_unstable();
    want.dedup();
    have == want
}

/// Sets a file's permissions (`PUT .../files/{id}`), its bytes left as they are.
pub async fn update_permissions(
    client: &AppwriteClient,
    bucket: &str,
    id: &str,
    permissions: &[String],
) -> Result<Value, AppwriteError> {
    client
        .call(
            reqwest::Method::PUT,
            &format!("/storage/buckets/{bucket}/files/{id}"),
            Some(&json!({ "permissions": permissions })),
        )
        .await
}

/// Why an upload stopped.
#[derive(Debug)]
pub enum UploadError {
    /// Reading the file failed.
    Disk(String),
    /// The file changed length while it was sent (it ended early, or grew): it was there and
    /// readable, so not missing (adv34 F12).
    Changed(String),
    /// The server refused or failed.
    Server(AppwriteError),
}

/// Uploads the `len` bytes of the file at `path` as file `id` of `bucket`, named `name`, with
/// `permissions` (`None`: none of its own; sent with every chunk, the server keeps the first's);
/// returns the server's record of the finished file.
#[allow(clippy::too_many_arguments)]
pub async fn upload(
    client: &AppwriteClient,
    bucket: &str,
    id: &str,
    name: &str,
    mime: Option<&str>,
    permissions: Option<&[String]>,
    path: &Path,
    len: u64,
) -> Result<Value, UploadError> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| UploadError::Disk(e.to_string()))?;
    let route = format!("/storage/buckets/{bucket}/files");
    let mime = mime.unwrap_or("application/octet-stream").to_string();
    // A name a multipart header cannot carry as it is goes as a stand-in, then set exactly.
    let sent_name = multipart_name(name);
    let mut start = 0u64;
    let last = loop {
        let want = (len - start).min(CHUNK) as usize;
        let mut buf = vec![0u8; want];
        f.read_exact(&mut buf).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                UploadError::Changed(format!(
                    "{} ended before byte {} of the {len} it held when checked",
                    path.display(),
                    start + want as u64
                ))
            } else {
                UploadError::Disk(format!(
                    "reading bytes {start}.. of {}: {e}",
                    path.display()
                ))
            }
        })?;
        // Shared, not copied, by each attempt's request (a retry sends the same chunk again).
        let buf = bytes::Bytes::from(buf);
        let chunked = len > CHUNK;
        let end = start + want as u64;
        let range = format!("bytes {start}-{}/{len}", end.saturating_sub(1));
        let build = |req: reqwest::RequestBuilder| {
            let part = || {
                reqwest::multipart::Part::stream_with_length(buf.clone(), want as u64)
                    .file_name(sent_name.to_string())
            };
            let part = part().mime_str(&mime).unwrap_or_else(|_| part());
            let mut form = reqwest::multipart::Form::new().text("fileId", id.to_string());
            for p in permissions.into_iter().flatten() {
                form = form.text("permissions[]", p.clone());
            }
            let form = form.part("file", part);
            let req = req.multipart(form);
            if chunked {
                req.header("content-range", range.clone())
                    .header("x-appwrite-id", id.to_string())
            } else {
                req
            }
        };
        let reply = match client.call_with(reqwest::Method::POST, &route, build).await {
            Ok(reply) => reply,
            // A one-request upload retried after the server took it (its answer lost) finds
            // the file there: the server's record says whether it is these bytes.
            Err(e) if !chunked && e.status() == Some(409) => file(client, bucket, id)
                .await
                .map_err(UploadError::Server)?
                .ok_or(UploadError::Server(e))?,
            Err(e) => return Err(UploadError::Server(e)),
        };
        start = end;
        if start >= len {
            break reply;
        }
    };
    // The file must end where its length said: one more byte means it grew meanwhile.
    let mut probe = [0u8; 1];
    if f.read(&mut probe)
        .await
        .map_err(|e| UploadError::Disk(e.to_string()))?
        != 0
    {
        return Err(UploadError::Changed(format!(
            "{} grew past the {len} bytes it held when checked",
            path.display()
        )));
    }
    if last["name"].as_str() != Some(name) {
        return rename(client, bucket, id, name)
            .await
            .map_err(UploadError::Server);
    }
    Ok(last)
}

/// The file name sent in an upload's multipart header: `name` itself, unless it holds a
/// character such a header escapes (a backslash, a double quote) or cannot carry (CR, LF, other
/// control characters) — servers differ in undoing the escapes (adv39 F3: `a\\b` was stored
/// with its backslashes doubled; F4: a newline broke the request). Then the same name with
/// those characters as `_`, which [`rename`] replaces by the exact name (a JSON body).
pub fn multipart_name(name: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c == '\\' || c == '"' || c.is_control();
    if name.contains(unsafe_char) {
        name.replace(unsafe_char, "_").into()
    } else {
        name.into()
    }
}

/// Sets the name of file `id` of `bucket`; returns the server's record.
pub async fn rename(
    client: &AppwriteClient,
    bucket: &str,
    id: &str,
    name: &str,
) -> Result<Value, AppwriteError> {
    client
        .call(
            reqwest::Method::PUT,
            &format!("/storage/buckets/{bucket}/files/{id}"),
            Some(&json!({ "name": name })),
        )
        .await
}

/// Streams file `id` of `bucket` down and hashes it: (length, sha256 hex, md5 hex).
pub async fn download_digests(
    client: &AppwriteClient,
    bucket: &str,
    id: &str,
) -> Result<(u64, String, String), AppwriteError> {
    use md5::Digest as _;
    let mut sha = sha2::Sha256::new();
    let mut md5 = md5::Md5::new();
    let mut len = 0u64;
    client
        .download(
            &format!("/storage/buckets/{bucket}/files/{id}/download"),
            |bytes| {
                len += bytes.len() as u64;
                sha.update(bytes);
                md5.update(bytes);
            },
        )
        .await?;
    Ok((
        len,
        crate::sink::gridfs::hex(&sha.finalize()),
        crate::sink::gridfs::hex(&md5.finalize()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: Option<u64>, exts: &[&str]) -> BucketLimits {
        BucketLimits::of_options(
            "docs",
            &BucketOptions {
                maximum_file_size: max,
                allowed_file_extensions: Some(exts.iter().map(|e| e.to_string()).collect()),
                ..Default::default()
            },
        )
    }

    #[test]
    fn the_extension_is_what_php_pathinfo_gives() {
        for (name, ext) in [
            ("a.bin", "bin"),
            ("A.BIN", "BIN"),
            ("archive.tar.gz", "gz"),
            ("noext", ""),
            ("name.", ""),
            (".bin", "bin"),
            ("dir.d/noext", ""),
            ("dir/a.txt", "txt"),
            ("a.bin/", "bin"),
            ("", ""),
        ] {
            assert_eq!(extension(name), ext, "{name}");
        }
    }

    #[test]
    fn a_file_is_refused_as_appwrite_refuses_it() {
        let l = limits(Some(12_000_000), &["bin", "txt"]);
        assert_eq!(l.refusal("a.bin", 12_000_000), None, "at the limit");
        let over = l.refusal("a.bin", 12_000_001).unwrap();
        assert!(
            over.contains("12000001 bytes")
                && over.contains("maximumFileSize of 12000000")
                && over.contains("storage_invalid_file_size"),
            "{over}"
        );
        let exe = l.refusal("bad.exe", 10).unwrap();
        assert!(
            exe.contains("\"exe\"") && exe.contains("storage_file_type_unsupported"),
            "{exe}"
        );
        assert!(l.refusal("A.BIN", 10).is_some(), "case-sensitive");
        assert!(l.refusal("noext", 10).unwrap().contains("no extension"));
        // The extension is checked first, as Appwrite does.
        assert!(l.refusal("bad.exe", 13_000_000).unwrap().contains("exe"));
        // No list, no size: anything goes.
        assert_eq!(limits(None, &[]).refusal("x", u64::MAX), None);
        // An empty extension listed lets files without one through.
        assert_eq!(limits(None, &[""]).refusal("noext", 1), None);
    }

    #[test]
    fn an_existing_buckets_settings_are_the_limits() {
        let o = BucketOptions {
            maximum_file_size: Some(12_000_000),
            allowed_file_extensions: Some(vec!["bin".into()]),
            ..Default::default()
        };
        let record = json!({ "maximumFileSize": 5, "allowedFileExtensions": ["bin"] });
        let l = BucketLimits::of_bucket("docs", &record, &o);
        assert_eq!(l.maximum_file_size, Some(5));
        assert!(l.refusal("a.bin", 6).unwrap().contains("existing bucket"));
        let said = l.differences().unwrap();
        assert!(
            said.contains("maximumFileSize 5 (the mapping asks 12000000)")
                && !said.contains("allowedFileExtensions"),
            "{said}"
        );
        let same = json!({ "maximumFileSize": 12_000_000, "allowedFileExtensions": ["bin"] });
        assert_eq!(
            BucketLimits::of_bucket("docs", &same, &o).differences(),
            None
        );
    }

    #[test]
    fn a_buckets_name_says_its_database() {
        assert_eq!(
            bucket_database(&bucket_name("docs", "registry")),
            Some("registry")
        );
        assert_eq!(bucket_database(&bucket_name("a b", "x [y]")), Some("x [y]"));
        assert_eq!(bucket_database("docs"), None);
        assert_eq!(bucket_database("docs [cutover database"), None);
    }
}
