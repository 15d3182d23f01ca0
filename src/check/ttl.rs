//! TTL `[[index]]`es whose documents are past their expiry when the run writes them: mongod's
//! TTL monitor (a pass every 60 s) deletes each such document within about a minute, so a
//! completed run is followed by a target missing them and a failing verify. `check` counts them
//! as mongod judges: the indexed field's date (the earliest of an array of dates) plus
//! `ttl_seconds` before now; a document whose field holds no date never expires; a partial
//! filter is applied as the unique check applies it (other operators: unchecked, said).

use bson::{Bson, Document};

use crate::mapping::spec::IndexSpec;
use crate::sink::mongo_unique::{index_values, matches, unsupported};

pub(crate) struct TtlIndex {
    pub name: String,
    pub path: String,
    pub ttl_seconds: u64,
    partial: Option<Document>,
    pub unchecked: Option<String>,
    /// Documents already expired when written, and the source key of the first.
    pub expired: u64,
    pub example: Option<String>,
}

impl TtlIndex {
    /// The TTL indexes of `indexes` (one field each, as MongoDB requires).
    pub fn of(indexes: &[IndexSpec]) -> Vec<TtlIndex> {
        indexes
            .iter()
            .filter(|ix| ix.kind.is_none())
            .filter_map(|ix| {
                let ttl_seconds = ix.ttl_seconds?;
                let (path, _) = ix.key_pairs().into_iter().next()?;
                let partial = ix.partial.as_ref().and_then(|t| {
                    match crate::mapping::plan::toml_to_bson(&toml::Value::Table(t.clone())) {
                        Bson::Document(d) => Some(d),
                        _ => None,
                    }
                });
                Some(TtlIndex {
                    name: ix.name.clone().unwrap_or_else(|| format!("{path}_1")),
                    unchecked: partial.as_ref().and_then(unsupported),
                    path,
                    ttl_seconds,
                    partial,
                    expired: 0,
                    example: None,
                })
            })
            .collect()
    }

    /// The document `doc` (source key `key`) the run would write at `now_ms`.
    pub fn add(&mut self, key: &str, doc: &Document, now_ms: i64) {
        if self.unchecked.is_some() || self.partial.as_ref().is_some_and(|f| !matches(f, doc)) {
            return;
        }
        let earliest = index_values(doc, &self.path)
            .iter()
            .filter_map(|v| match v {
                Bson::DateTime(d) => Some(d.timestamp_millis()),
                _ => None,
            })
            .min();
        let ttl_ms = i64::try_from(self.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        if let Some(at) = earliest
            && at.saturating_add(ttl_ms) < now_ms
        {
            self.expired += 1;
            if self.example.is_none() {
                self.example = Some(key.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn index(toml: &str) -> TtlIndex {
        let ix: IndexSpec = toml::from_str(toml).unwrap();
        TtlIndex::of(&[ix]).pop().unwrap()
    }

    #[test]
    fn a_document_expires_by_its_earliest_date_and_never_without_one() {
        let now = 1_000_000_000_000;
        let day = 86_400_000;
        let at = |ms: i64| Bson::DateTime(bson::DateTime::from_millis(ms));
        let mut ix = index("keys = [\"at\"]\nttl_seconds = 86400");
        ix.add("old", &doc! { "at": at(now - 2 * day) }, now);
        ix.add("fresh", &doc! { "at": at(now - day / 2) }, now);
        ix.add("text", &doc! { "at": "2000-01-01" }, now);
        ix.add("none", &doc! {}, now);
        ix.add("array", &doc! { "at": [at(now), at(now - 3 * day)] }, now);
        assert_eq!(ix.expired, 2);
        assert_eq!(ix.example.as_deref(), Some("old"));
        let mut partial = index("keys = [\"at\"]\nttl_seconds = 1\npartial = { kind = \"a\" }");
        partial.add("b", &doc! { "kind": "b", "at": at(0) }, now);
        assert_eq!(partial.expired, 0);
        partial.add("a", &doc! { "kind": "a", "at": at(0) }, now);
        assert_eq!(partial.expired, 1);
    }
}
