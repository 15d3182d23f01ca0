//! The keys a document holds in a mapping's unique `[[index]]`es as MongoDB forms them, found
//! beforehand: by `check` (keys the data repeats fail the index build after a first load) and by
//! a re-run into a collection that has the indexes already (which row keeps a key two rows now
//! share: the first in key order, as for Appwrite).
//!
//! A missing field is null (unless the index is partial and its filter leaves the document out),
//! an array field gives one key per element (a multikey index: two documents sharing an element
//! collide), numbers compare by value (`1`, `1.0` and `NumberLong(1)` are one key). With a
//! `collation`, strings are compared after Unicode canonical normalisation (`café` precomposed and
//! with a combining accent are one key to ICU at its default strength); ICU equates a few more
//! (ignorable characters), which this does not see. A partial filter of equalities, `$exists` and
//! `$type` is applied; any other makes the index unchecked (said).

use bson::{Bson, Document};
use unicode_normalization::UnicodeNormalization;

use crate::mapping::spec::IndexSpec;

/// Who holds a unique key a row repeats, as `check` and a dry run name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A row written before it (its source key, or its id as the target names it).
    Row(String),
    /// A record of the target that the run leaves as it is (the document of a row gone from the
    /// source, kept without `--sync-deletes`; of a row before the checkpoint a resume starts
    /// after), said in full.
    Kept(String),
}

impl Holder {
    /// Whether a row written before holds the key (then the first in key order keeps it).
    pub fn is_row(&self) -> bool {
        matches!(self, Holder::Row(_))
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Row(key) => write!(f, "row {key}"),
            Holder::Kept(said) => f.write_str(said),
        }
    }
}

/// A document's `_id` as a holder is named: a number or a text as it is, anything else as its
/// extended JSON.
pub fn shown_id(id: &Bson) -> String {
    match id {
        Bson::String(s) => s.clone(),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        other => other.clone().into_relaxed_extjson().to_string(),
    }
}

/// One unique index of a mapping, as its keys are formed.
#[derive(Debug, Clone)]
pub struct MongoUnique {
    pub name: String,
    /// The index's key pattern, as `createIndexes` is given it.
    pub pattern: Document,
    paths: Vec<String>,
    partial: Option<Document>,
    collation: bool,
    /// Why the index cannot be checked (a partial filter of other operators).
    pub unchecked: Option<String>,
}

impl MongoUnique {
    /// The unique ordered indexes of `indexes` (text and 2dsphere ones are not unique).
    pub fn of(indexes: &[IndexSpec]) -> Vec<MongoUnique> {
        indexes
            .iter()
            .filter(|ix| ix.unique && ix.kind.is_none())
            .map(|ix| {
                let paths: Vec<String> = ix.key_pairs().into_iter().map(|(p, _)| p).collect();
                let mut pattern = Document::new();
                for (p, d) in ix.key_pairs() {
                    pattern.insert(p, d);
                }
                let partial = ix.partial.as_ref().and_then(|t| {
                    match crate::mapping::plan::toml_to_bson(&toml::Value::Table(t.clone())) {
                        Bson::Document(d) => Some(d),
                        _ => None,
                    }
                });
                let unchecked = partial.as_ref().and_then(unsupported);
                MongoUnique {
                    name: ix.name.clone().unwrap_or_else(|| {
                        ix.key_pairs()
                            .iter()
                            .map(|(p, d)| format!("{p}_{d}"))
                            .collect::<Vec<_>>()
                            .join("_")
                    }),
                    pattern,
                    paths,
                    partial,
                    collation: ix.collation.is_some(),
                    unchecked,
                }
            })
            .collect()
    }

    /// The top-level fields a document's keys in this index are formed from (its paths' and its
    /// partial filter's): what to read of a document the target holds.
    pub fn fields(&self) -> Vec<String> {
        let mut fields: Vec<String> = self
            .paths
            .iter()
            .map(String::as_str)
            .chain(
                self.partial
                    .iter()
                    .flat_map(|f| f.keys().map(String::as_str)),
            )
            .map(|p| p.split('.').next().unwrap_or(p).to_string())
            .collect();
        fields.sort();
        fields.dedup();
        fields
    }

    /// The keys `doc` holds in this index, each as one text (sorted, no repeats); none when the
    /// index is unchecked or its partial filter leaves the document out.
    pub fn keys(&self, doc: &Document) -> Vec<String> {
        if self.unchecked.is_some() {
            return Vec::new();
        }
        if let Some(filter) = &self.partial
            && !matches(filter, doc)
        {
            return Vec::new();
        }
        // One key per combination of the fields' values (a multikey index: an array's elements).
        let collation = self.collation;
        let mut keys: Vec<Vec<String>> = vec![Vec::new()];
        for path in &self.paths {
            let values = index_values(doc, path);
            keys = keys
                .into_iter()
                .flat_map(|k| {
                    let values = &values;
                    values.iter().map(move |v| {
                        let mut k = k.clone();
                        k.push(canonical(v, collation));
                        k
                    })
                })
                .collect();
        }
        let mut keys: Vec<String> = keys.into_iter().map(|k| k.join(", ")).collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// Why a partial filter is beyond what [`matches`] applies, if it is.
pub(crate) fn unsupported(filter: &Document) -> Option<String> {
    for (k, v) in filter {
        if k.starts_with('$') {
            return Some(format!("its partial filter uses `{k}`"));
        }
        if let Bson::Document(ops) = v
            && ops.keys().any(|o| o.starts_with('$'))
        {
            for (op, _) in ops {
                if !matches!(op.as_str(), "$exists" | "$type" | "$eq") {
                    return Some(format!("its partial filter uses `{op}`"));
                }
            }
        }
    }
    None
}

/// Whether `doc` passes a partial filter of equalities, `$exists`, `$eq` and `$type`.
pub(crate) fn matches(filter: &Document, doc: &Document) -> bool {
    filter.iter().all(|(path, want)| {
        let have = lookup(doc, path);
        match want {
            Bson::Document(ops) if ops.keys().any(|o| o.starts_with('$')) => {
                ops.iter().all(|(op, arg)| match op.as_str() {
                    "$exists" => have.is_some() == truthy(arg),
                    "$eq" => have.is_some_and(|h| same(h, arg)),
                    "$type" => have.is_some_and(|h| type_is(h, arg)),
                    _ => false,
                })
            }
            _ => have.is_some_and(|h| same(h, want)),
        }
    })
}

fn truthy(b: &Bson) -> bool {
    match b {
        Bson::Boolean(x) => *x,
        Bson::Null | Bson::Undefined => false,
        Bson::Int32(i) => *i != 0,
        Bson::Int64(i) => *i != 0,
        Bson::Double(d) => *d != 0.0,
        _ => true,
    }
}

/// Equality as a query sees it: an array equals a value one of its elements equals.
fn same(have: &Bson, want: &Bson) -> bool {
    canonical(have, false) == canonical(want, false)
        || matches!(have, Bson::Array(a) if a.iter().any(|e| canonical(e, false) == canonical(want, false)))
}

fn type_is(have: &Bson, want: &Bson) -> bool {
    let name = match have {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Binary(_) => "binData",
        Bson::ObjectId(_) => "objectId",
        Bson::Boolean(_) => "bool",
        Bson::DateTime(_) => "date",
        Bson::Null => "null",
        Bson::Int32(_) => "int",
        Bson::Int64(_) => "long",
        Bson::Decimal128(_) => "decimal",
        Bson::Timestamp(_) => "timestamp",
        _ => "other",
    };
    let number = matches!(name, "double" | "int" | "long" | "decimal");
    let one = |w: &Bson| match w {
        Bson::String(s) => s == name || (s == "number" && number),
        _ => false,
    };
    match want {
        Bson::Array(a) => a.iter().any(one),
        w => one(w),
    }
}

/// The keys one document gives an index on `path`, as mongod forms them: through nested
/// documents and through arrays of documents (`items.code`: each element's `code`; an element
/// without it is null), an array at the end giving each element (an empty one `undefined`), a
/// missing field null.
pub(crate) fn index_values(doc: &Document, path: &str) -> Vec<Bson> {
    fn walk(v: &Bson, rest: &[&str], out: &mut Vec<Bson>) {
        match (v, rest.split_first()) {
            (Bson::Array(a), _) if a.is_empty() => out.push(Bson::Undefined),
            (Bson::Array(a), None) => out.extend(a.iter().cloned()),
            (Bson::Array(a), Some(_)) => {
                // A scalar element has no field: it gives nothing (null only when no element
                // gives a value).
                for e in a {
                    if let Bson::Document(_) = e {
                        walk(e, rest, out);
                    }
                }
            }
            (Bson::Document(d), Some((first, tail))) => match d.get(*first) {
                Some(next) => walk(next, tail, out),
                None => out.push(Bson::Null),
            },
            (Bson::Null | Bson::Undefined, _) => out.push(Bson::Null),
            (other, None) => out.push(other.clone()),
            (_, Some(_)) => out.push(Bson::Null),
        }
    }
    let parts: Vec<&str> = path.split('.').collect();
    let mut out = Vec::new();
    match doc.get(parts[0]) {
        Some(v) => walk(v, &parts[1..], &mut out),
        None => out.push(Bson::Null),
    }
    if out.is_empty() {
        out.push(Bson::Null);
    }
    out.sort_by_key(|b| canonical(b, false));
    out.dedup_by_key(|b| canonical(b, false));
    out
}

/// The value at a dotted path (through nested documents; not into arrays).
fn lookup<'d>(doc: &'d Document, path: &str) -> Option<&'d Bson> {
    let mut parts = path.split('.');
    let mut v = doc.get(parts.next()?)?;
    for p in parts {
        v = match v {
            Bson::Document(d) => d.get(p)?,
            _ => return None,
        };
    }
    Some(v)
}

/// A value as an index key compares it: numbers by their exact value whatever their type
/// (`1`, `1.0`, `NumberLong(1)`, `NumberDecimal("1.00")` are one key; a long past 2^53 is not the
/// double next to it), strings (with a collation) after canonical normalisation, the rest by
/// their canonical extended JSON.
fn canonical(v: &Bson, collation: bool) -> String {
    match v {
        Bson::Int32(i) => exact_number(&i.to_string()),
        Bson::Int64(i) => exact_number(&i.to_string()),
        Bson::Double(d) if d.is_nan() => "n:NaN".to_string(),
        Bson::Double(d) if d.is_infinite() => format!("n:{}inf", if *d < 0.0 { "-" } else { "" }),
        // The shortest digits that read back as the double: its value for the short decimals
        // keys hold (a double that is not exactly its shortest digits, 0.1, is taken as them).
        Bson::Double(d) => exact_number(&format!("{d:e}")),
        Bson::Decimal128(d) => match d.to_string().as_str() {
            "NaN" | "-NaN" => "n:NaN".to_string(),
            "Infinity" => "n:inf".to_string(),
            "-Infinity" => "n:-inf".to_string(),
            text => exact_number(text),
        },
        Bson::String(s) if collation => format!("s:{}", s.nfc().collect::<String>()),
        Bson::String(s) => format!("s:{s}"),
        Bson::Null => "null".to_string(),
        Bson::Undefined => "undefined".to_string(),
        other => other.clone().into_canonical_extjson().to_string(),
    }
}

/// A number's text (`-12.50`, `1E+3`, `1.5e0`) as its exact value: `n:<sign><digits>e<exp>`,
/// without leading or trailing zeros (zero is `n:0`, whatever its sign).
fn exact_number(text: &str) -> String {
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], body[i + 1..].parse::<i64>().unwrap_or(0)),
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{int}{frac}");
    let mut exp = exp - frac.len() as i64;
    let lead = digits.len() - digits.trim_start_matches('0').len();
    digits.drain(..lead);
    if digits.is_empty() {
        return "n:0".to_string();
    }
    while digits.ends_with('0') {
        digits.pop();
        exp += 1;
    }
    format!("n:{}{digits}e{exp}", if neg { "-" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_one_key_exactly_when_their_values_are_equal() {
        let d = |t: &str| Bson::Decimal128(t.parse().unwrap());
        let same = |a: &Bson, b: &Bson| canonical(a, false) == canonical(b, false);
        assert!(same(&Bson::Int32(1), &d("1.00")));
        assert!(same(&Bson::Double(1.5), &d("1.50")));
        assert!(same(&Bson::Int64(1000), &d("1E+3")));
        assert!(same(&Bson::Double(-0.0), &Bson::Int32(0)));
        assert!(!same(
            &Bson::Int32(1),
            &d("1.00000000000000000000000000000001")
        ));
        assert!(same(
            &Bson::Int64(9007199254740993),
            &d("9007199254740993.0")
        ));
        assert!(!same(
            &Bson::Int64(9007199254740993),
            &Bson::Double(9007199254740992.0)
        ));
        assert!(same(&Bson::Double(f64::NAN), &d("NaN")));
    }
}
