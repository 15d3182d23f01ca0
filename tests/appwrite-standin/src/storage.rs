//! Storage in the stand-in: buckets, and file uploads whole or in chunks of exactly 5 MiB with
//! `Content-Range` (the last may be shorter), `x-appwrite-id` naming the file from the second
//! chunk, chunks in any order, a re-sent chunk of a completed file answered 200.

use std::collections::BTreeMap;

use md5::{Digest, Md5};
use serde_json::{Value, json};

use super::ApiError;

/// Appwrite's chunk size.
pub const CHUNK: u64 = 5 * 1024 * 1024;

#[derive(Debug)]
pub(super) struct Bucket {
    pub json: Value,
    pub files: BTreeMap<String, StoredFile>,
}

#[derive(Debug)]
pub(super) struct StoredFile {
    pub name: String,
    pub mime: String,
    pub total: u64,
    pub chunks_total: u64,
    pub chunks: BTreeMap<u64, Vec<u8>>,
    pub created_at: String,
    pub content: Option<Vec<u8>>,
    /// `$permissions`: as the upload's first request (or a later update) gave them.
    pub permissions: Vec<String>,
}

impl StoredFile {
    pub fn json(&self, bucket: &str, id: &str) -> Value {
        let signature = self
            .content
            .as_ref()
            .map(|c| {
                Md5::digest(c)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            })
            .unwrap_or_default();
        json!({
            "$id": id, "bucketId": bucket, "$createdAt": self.created_at, "$updatedAt": self.created_at,
            "$permissions": self.permissions, "name": self.name, "signature": signature, "mimeType": self.mime,
            "sizeOriginal": self.total, "chunksTotal": self.chunks_total,
            "chunksUploaded": self.chunks.len() as u64 + u64::from(self.content.is_some() && self.chunks.is_empty()),
        })
    }
}

/// The `permissions` of a file as Appwrite takes them: `action("role")` with action read,
/// update, delete or write (stored as update and delete); anything else is refused as the server
/// refuses it.
pub fn file_permissions(given: &[String]) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for p in given {
        let bad = || {
            ApiError::new(
                400,
                "general_argument_invalid",
                format!(
                    "Invalid `permissions` param: Permission \"{p}\" is not allowed. Must be one of: read, update, delete, write."
                ),
            )
        };
        let (action, rest) = p.split_once('(').ok_or_else(bad)?;
        let role = rest
            .strip_suffix(')')
            .and_then(|r| r.strip_prefix('"'))
            .and_then(|r| r.strip_suffix('"'))
            .filter(|r| !r.is_empty() && !r.contains('"'))
            .ok_or_else(bad)?;
        let actions: &[&str] = match action {
            "read" | "update" | "delete" => &[action],
            "write" => &["update", "delete"],
            _ => return Err(bad()),
        };
        for a in actions {
            let p = format!("{a}(\"{role}\")");
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// `bytes start-end/total` → (start, end inclusive, total).
pub fn parse_content_range(v: &str) -> Result<(u64, u64, u64), ApiError> {
    let bad = || {
        ApiError::new(
            416,
            "storage_invalid_content_range",
            "Invalid content range.",
        )
    };
    let rest = v.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, total) = rest.split_once('/').ok_or_else(bad)?;
    let (start, end) = range.split_once('-').ok_or_else(bad)?;
    let (start, end, total): (u64, u64, u64) = (
        start.parse().map_err(|_| bad())?,
        end.parse().map_err(|_| bad())?,
        total.parse().map_err(|_| bad())?,
    );
    if end < start || end >= total || start % CHUNK != 0 {
        return Err(bad());
    }
    Ok((start, end, total))
}

/// The extension Appwrite checks of an uploaded file's name: PHP's `pathinfo($name,
/// PATHINFO_EXTENSION)` (utopia-php/storage's `FileExt` validator) — the part after the last
/// dot of the basename (the part after the last `/`, trailing slashes dropped), as it is; empty
/// when the basename has no dot.
pub fn php_extension(name: &str) -> &str {
    let base = name.trim_end_matches('/');
    let base = match base.rfind('/') {
        Some(i) => &base[i + 1..],
        None => base,
    };
    match base.rfind('.') {
        Some(i) => &base[i + 1..],
        None => "",
    }
}

/// Appwrite's validators of `createFile`, in its order, on every request of an upload (a chunk
/// too): the name's extension must be one of the bucket's `allowedFileExtensions` (compared
/// strictly, case and all; an empty list allows any), then the file's whole size (a chunked
/// upload's `Content-Range` total) must be at most `maximumFileSize`.
fn validate(bucket: &Bucket, name: &str, size: u64) -> Result<(), ApiError> {
    let allowed: Vec<&str> = bucket.json["allowedFileExtensions"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !allowed.is_empty() && !allowed.contains(&php_extension(name)) {
        return Err(ApiError::new(
            400,
            "storage_file_type_unsupported",
            "File extension not allowed",
        ));
    }
    let max = bucket.json["maximumFileSize"].as_u64().unwrap_or(u64::MAX);
    if size > max {
        return Err(ApiError::new(
            400,
            "storage_invalid_file_size",
            "File size not allowed",
        ));
    }
    Ok(())
}

/// Adds one upload (whole file or one chunk) to `bucket`. Returns (status, file json).
#[allow(clippy::too_many_arguments)]
pub(super) fn upload(
    bucket_id: &str,
    bucket: &mut Bucket,
    file_id: &str,
    name: &str,
    mime: &str,
    data: Vec<u8>,
    range: Option<(u64, u64, u64)>,
    permissions: Vec<String>,
    now: String,
) -> Result<(u16, Value), ApiError> {
    // Before anything else of the upload, as Appwrite validates.
    validate(
        bucket,
        name,
        range.map_or(data.len() as u64, |(_, _, total)| total),
    )?;
    match range {
        None => {
            if bucket.files.contains_key(file_id) {
                return Err(ApiError::new(
                    409,
                    "storage_file_already_exists",
                    "A storage file with the requested ID already exists.",
                ));
            }
            let f = StoredFile {
                name: name.into(),
                mime: mime.into(),
                total: data.len() as u64,
                chunks_total: 1,
                chunks: BTreeMap::new(),
                created_at: now,
                content: Some(data),
                permissions,
            };
            let j = f.json(bucket_id, file_id);
            bucket.files.insert(file_id.into(), f);
            Ok((201, j))
        }
        Some((start, end, total)) => {
            if data.len() as u64 != end - start + 1 {
                return Err(ApiError::new(
                    416,
                    "storage_invalid_content_range",
                    "The chunk does not match its content range.",
                ));
            }
            let chunks_total = total.div_ceil(CHUNK);
            let index = start / CHUNK;
            let is_last = index + 1 == chunks_total;
            if !is_last && data.len() as u64 != CHUNK {
                return Err(ApiError::new(
                    416,
                    "storage_invalid_content_range",
                    "Chunks must be exactly 5 MiB but the last.",
                ));
            }
            let f = bucket
                .files
                .entry(file_id.into())
                .or_insert_with(|| StoredFile {
                    name: name.into(),
                    mime: mime.into(),
                    total,
                    chunks_total,
                    chunks: BTreeMap::new(),
                    created_at: now,
                    content: None,
                    permissions,
                });
            if f.content.is_some() {
                // Resuming a finished upload is idempotent.
                return Ok((200, f.json(bucket_id, file_id)));
            }
            f.chunks.insert(index, data);
            if f.chunks.len() as u64 == f.chunks_total {
                let mut all = Vec::with_capacity(f.total as usize);
                for c in f.chunks.values() {
                    all.extend_from_slice(c);
                }
                f.content = Some(all);
            }
            let mut j = f.json(bucket_id, file_id);
            j["chunksUploaded"] = json!(f.chunks.len() as u64);
            Ok((201, j))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(max: u64, exts: &[&str]) -> Bucket {
        Bucket {
            json: json!({ "maximumFileSize": max, "allowedFileExtensions": exts }),
            files: BTreeMap::new(),
        }
    }

    fn put(b: &mut Bucket, id: &str, name: &str, len: usize) -> Result<u16, String> {
        upload(
            "b",
            b,
            id,
            name,
            "application/octet-stream",
            vec![7; len],
            None,
            Vec::new(),
            "now".into(),
        )
        .map(|(status, _)| status)
        .map_err(|e| format!("{} {}", e.status.as_u16(), e.kind))
    }

    #[test]
    fn extensions_are_what_php_pathinfo_says() {
        for (name, ext) in [
            ("a.bin", "bin"),
            ("A.BIN", "BIN"),
            ("x.tar.gz", "gz"),
            ("noext", ""),
            ("trailing.", ""),
            (".bin", "bin"),
            ("d.d/noext", ""),
            ("d/a.txt", "txt"),
        ] {
            assert_eq!(php_extension(name), ext, "{name}");
        }
    }

    #[test]
    fn a_bucket_refuses_extensions_it_does_not_list_and_files_over_its_size() {
        let mut b = bucket(10, &["bin", "txt"]);
        assert_eq!(put(&mut b, "1", "ok.bin", 10), Ok(201), "at the limit");
        let unsupported = Err("400 storage_file_type_unsupported".to_string());
        assert_eq!(put(&mut b, "2", "bad.exe", 1), unsupported);
        assert_eq!(put(&mut b, "3", "A.BIN", 1), unsupported, "case-sensitive");
        assert_eq!(put(&mut b, "4", "noext", 1), unsupported);
        let too_big = Err("400 storage_invalid_file_size".to_string());
        assert_eq!(put(&mut b, "5", "big.txt", 11), too_big);
        // The extension first, as Appwrite; and before the id is looked at.
        assert_eq!(put(&mut b, "6", "big.exe", 11), unsupported);
        assert_eq!(put(&mut b, "1", "again.exe", 1), unsupported);
        assert_eq!(b.files.len(), 1);
        // A chunk is judged by its upload's whole size.
        let chunk = upload(
            "b",
            &mut b,
            "7",
            "c.bin",
            "application/octet-stream",
            vec![0; 5],
            Some((0, 4, 11)),
            Vec::new(),
            "now".into(),
        );
        assert_eq!(
            chunk.err().map(|e| e.kind),
            Some("storage_invalid_file_size")
        );
        // No list: any extension.
        let mut any = bucket(10, &[]);
        assert_eq!(put(&mut any, "1", "noext", 1), Ok(201));
    }
}
