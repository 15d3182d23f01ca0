//! A small BSON writer for the values cutover produces, straight into one growing byte buffer per
//! document: no intermediate `Document`, no per-element conversions.

use bson::{Bson, RawDocumentBuf};

/// Why a value cannot be encoded.
pub type EncodeError = String;

/// Starts a document; returns the position of its length prefix.
pub fn begin(buf: &mut Vec<u8>) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0]);
    at
}

/// Ends the document begun at `at`, writing its terminator and length.
pub fn end(buf: &mut Vec<u8>, at: usize) -> Result<(), EncodeError> {
    buf.push(0);
    let len = i32::try_from(buf.len() - at).map_err(|_| "document over 2 GiB".to_string())?;
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

fn key(buf: &mut Vec<u8>, tag: u8, k: &str) -> Result<(), EncodeError> {
    if k.as_bytes().contains(&0) {
        return Err(format!("key {k:?} contains a NUL byte"));
    }
    buf.push(tag);
    buf.extend_from_slice(k.as_bytes());
    buf.push(0);
    Ok(())
}

fn string(buf: &mut Vec<u8>, s: &str) -> Result<(), EncodeError> {
    let len = i32::try_from(s.len() + 1).map_err(|_| "string over 2 GiB".to_string())?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    Ok(())
}

/// Writes element `k: v`.
pub fn element(buf: &mut Vec<u8>, k: &str, v: &Bson) -> Result<(), EncodeError> {
    match v {
        Bson::Double(d) => {
            key(buf, 0x01, k)?;
            buf.extend_from_slice(&d.to_le_bytes());
        }
        Bson::String(s) => {
            key(buf, 0x02, k)?;
            string(buf, s)?;
        }
        Bson::Document(d) => {
            key(buf, 0x03, k)?;
            let at = begin(buf);
            for (dk, dv) in d {
                element(buf, dk, dv)?;
            }
            end(buf, at)?;
        }
        Bson::Array(items) => {
            key(buf, 0x04, k)?;
            let at = begin(buf);
            let mut index = itoa_buf();
            for (i, item) in items.iter().enumerate() {
                element(buf, index_key(&mut index, i), item)?;
            }
            end(buf, at)?;
        }
        Bson::Binary(b) => {
            key(buf, 0x05, k)?;
            let len = i32::try_from(b.bytes.len()).map_err(|_| "binary over 2 GiB".to_string())?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.push(u8::from(b.subtype));
            buf.extend_from_slice(&b.bytes);
        }
        Bson::Boolean(b) => {
            key(buf, 0x08, k)?;
            buf.push(u8::from(*b));
        }
        Bson::DateTime(d) => {
            key(buf, 0x09, k)?;
            buf.extend_from_slice(&d.timestamp_millis().to_le_bytes());
        }
        Bson::Null => key(buf, 0x0A, k)?,
        Bson::Int32(i) => {
            key(buf, 0x10, k)?;
            buf.extend_from_slice(&i.to_le_bytes());
        }
        Bson::Int64(i) => {
            key(buf, 0x12, k)?;
            buf.extend_from_slice(&i.to_le_bytes());
        }
        Bson::Decimal128(d) => {
            key(buf, 0x13, k)?;
            buf.extend_from_slice(&d.bytes());
        }
        other => {
            // Types cutover never produces from PostgreSQL values; encode them the slow way.
            let mut tmp = RawDocumentBuf::new();
            let raw = bson::RawBson::try_from(other.clone()).map_err(|e| e.to_string())?;
            tmp.append(k, raw);
            let bytes = tmp.as_bytes();
            buf.extend_from_slice(&bytes[4..bytes.len() - 1]);
        }
    }
    Ok(())
}

/// Writes the key of element `k` with type `tag` (its value follows, written by the caller).
pub fn element_key(buf: &mut Vec<u8>, tag: u8, k: &str) -> Result<(), EncodeError> {
    key(buf, tag, k)
}

/// The key of array element `i` (`"0"`, `"1"`, …) in `s`.
pub fn array_key(s: &mut String, i: usize) -> &str {
    index_key(s, i)
}

fn itoa_buf() -> String {
    String::with_capacity(8)
}

fn index_key(s: &mut String, i: usize) -> &str {
    use std::fmt::Write;
    s.clear();
    let _ = write!(s, "{i}");
    s.as_str()
}

/// Wraps finished bytes (from [`begin`]…[`end`] at position 0) as a raw document.
pub fn finish(buf: Vec<u8>) -> Result<RawDocumentBuf, EncodeError> {
    RawDocumentBuf::from_bytes(buf).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use bson::spec::BinarySubtype;
    use bson::{Binary, doc};

    use super::*;

    #[test]
    fn matches_the_bson_crate_byte_for_byte() {
        let d128 = bson::Decimal128::from_bytes(
            crate::transform::decimal::to_decimal128_bytes("12.50").unwrap(),
        );
        let doc = doc! {
            "s": "text ü",
            "i": 42,
            "l": 5_000_000_000i64,
            "d": 2.5,
            "b": true,
            "n": null,
            "t": bson::DateTime::from_millis(1_600_000_000_123),
            "u": Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] },
            "dec": d128,
            "a": [1, "x", { "k": [] }],
            "nested": { "deeper": { "x": 1 } },
            "ts": bson::Timestamp { time: 1, increment: 2 },
        };
        let mut buf = Vec::new();
        let at = begin(&mut buf);
        for (k, v) in &doc {
            element(&mut buf, k, v).unwrap();
        }
        end(&mut buf, at).unwrap();
        let expected = RawDocumentBuf::from_document(&doc).unwrap();
        assert_eq!(buf, expected.as_bytes());
        assert_eq!(finish(buf).unwrap().to_document().unwrap(), doc);
    }

    #[test]
    fn nul_in_a_key_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        assert!(element(&mut buf, "a\0b", &Bson::Int32(1)).is_err());
    }
}
