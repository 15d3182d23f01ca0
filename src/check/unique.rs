//! Unique `[[index]]`es the data would break, found by `check` before a run writes everything
//! and then fails at the index build (MongoDB builds a mapping's indexes after the load); the
//! keys are formed as [`MongoUnique`] forms them.

use std::collections::HashMap;

use bson::Document;

use crate::mapping::spec::IndexSpec;
use crate::sink::mongo_unique::{Holder, MongoUnique};

/// One unique index's keys seen so far, and how many documents repeat one.
pub(crate) struct UniqueIndex {
    pub name: String,
    index: MongoUnique,
    /// Why the index cannot be checked (a partial filter of other operators).
    pub unchecked: Option<String>,
    /// Key → the source key of the first document holding it.
    seen: HashMap<String, String>,
    /// Key → the document of the collection that the run leaves as it is holding it, said in
    /// full (see [`UniqueIndex::keep`]).
    kept: HashMap<String, String>,
    pub repeats: u64,
    /// The first repeat: (source key, the source key it repeats, the key as shown).
    pub example: Option<(String, String, String)>,
    /// The collection has the index already (a re-run): a repeat is a row the run rejects,
    /// not a build that fails.
    pub exists: bool,
}

impl UniqueIndex {
    /// The unique ordered indexes of `indexes` (text and 2dsphere ones are not unique).
    pub fn of(indexes: &[IndexSpec]) -> Vec<UniqueIndex> {
        MongoUnique::of(indexes)
            .into_iter()
            .map(|index| UniqueIndex {
                name: index.name.clone(),
                unchecked: index.unchecked.clone(),
                index,
                seen: HashMap::new(),
                kept: HashMap::new(),
                repeats: 0,
                example: None,
                exists: false,
            })
            .collect()
    }

    /// The key pattern of the index.
    pub fn pattern(&self) -> &Document {
        &self.index.pattern
    }

    /// Whether `doc` repeats a key a document added before holds, or one the run leaves as it
    /// is: (who holds it, the key).
    pub fn repeats(&self, doc: &Document) -> Option<(Holder, String)> {
        self.index.keys(doc).into_iter().find_map(|k| {
            let first = match self.kept.get(&k) {
                Some(said) => Holder::Kept(said.clone()),
                None => Holder::Row(self.seen.get(&k)?.clone()),
            };
            Some((first, k))
        })
    }

    /// The fields of a document its keys in this index are formed from.
    pub fn fields(&self) -> Vec<String> {
        self.index.fields()
    }

    /// `doc` (the fields [`UniqueIndex::fields`] names) is a document of the collection that the
    /// run leaves as it is (a re-run without `--sync-deletes`: a row gone from the source),
    /// `said` as its holder: it keeps its keys whatever row comes.
    pub fn keep(&mut self, said: &str, doc: &Document) {
        for k in self.index.keys(doc) {
            self.kept.entry(k).or_insert_with(|| said.to_string());
        }
    }

    /// The document `doc` (source key `key`) the run would write.
    pub fn add(&mut self, key: &str, doc: &Document) {
        for text in self.index.keys(doc) {
            match self.seen.get(&text) {
                Some(first) => {
                    self.repeats += 1;
                    if self.example.is_none() {
                        self.example = Some((key.to_string(), first.clone(), text));
                    }
                    return;
                }
                None => {
                    self.seen.insert(text, key.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn index(toml: &str) -> UniqueIndex {
        let spec: IndexSpec = toml::from_str(toml).unwrap();
        UniqueIndex::of(&[spec]).pop().unwrap()
    }

    #[test]
    fn missing_fields_collide_as_null_unless_a_partial_filter_leaves_them_out() {
        let mut ix = index("keys = [\"email\"]\nunique = true\n");
        ix.add("1", &doc! { "email": "a" });
        ix.add("2", &doc! {});
        ix.add("3", &doc! { "email": null });
        assert_eq!(ix.repeats, 1);
        assert_eq!(ix.example.as_ref().unwrap().1, "2");
        let mut ix = index(
            "keys = [\"email\"]\nunique = true\npartial = { email = { \"$exists\" = true } }\n",
        );
        ix.add("1", &doc! {});
        ix.add("2", &doc! {});
        assert_eq!(ix.repeats, 0);
    }

    #[test]
    fn numbers_compare_by_value_and_arrays_by_element() {
        let mut ix = index("keys = [\"n\", \"-t\"]\nunique = true\n");
        ix.add("1", &doc! { "n": 1, "t": ["x", "y"] });
        ix.add("2", &doc! { "n": 1.0, "t": "y" });
        ix.add("3", &doc! { "n": 2_i64, "t": "y" });
        assert_eq!(ix.repeats, 1);
        assert_eq!(ix.example.as_ref().unwrap().0, "2");
    }

    #[test]
    fn paths_through_arrays_of_documents_give_each_elements_value() {
        let mut ix = index("keys = [\"items.code\"]\nunique = true\n");
        ix.add("1", &doc! { "items": [{ "code": "a" }, { "code": "b" }] });
        ix.add("2", &doc! { "items": [{ "code": "c" }] });
        assert_eq!(ix.repeats, 0);
        ix.add("3", &doc! { "items": [{ "code": "b" }] });
        assert_eq!(ix.repeats, 1);
        // One document repeating a value within itself is one key (mongod builds it).
        let mut ix = index("keys = [\"j.a.b\"]\nunique = true\n");
        ix.add("1", &doc! { "j": { "a": [{ "b": 1 }, { "b": 1 }] } });
        ix.add("2", &doc! { "j": { "a": [{ "b": 2 }] } });
        assert_eq!(ix.repeats, 0);
        ix.add("3", &doc! { "j": { "a": [{ "b": 2.0 }] } });
        assert_eq!(ix.repeats, 1);
    }

    #[test]
    fn a_collation_equates_canonically_equivalent_strings() {
        let mut plain = index("keys = [\"c\"]\nunique = true\n");
        let mut collated = index("keys = [\"c\"]\nunique = true\ncollation = \"en\"\n");
        for ix in [&mut plain, &mut collated] {
            ix.add("1", &doc! { "c": "caf\u{e9}" });
            ix.add("2", &doc! { "c": "cafe\u{301}" });
        }
        assert_eq!((plain.repeats, collated.repeats), (0, 1));
    }

    #[test]
    fn a_kept_document_holds_its_keys_ahead_of_every_row() {
        let mut ix =
            index("keys = [\"items.code\", \"n\"]\nunique = true\npartial = { \"k.x\" = 1 }\n");
        assert_eq!(ix.fields(), ["items", "k", "n"]);
        ix.keep(
            "the document 9",
            &doc! { "items": [{ "code": "a" }], "n": 1, "k": { "x": 1 } },
        );
        // Left out by the partial filter: no key.
        ix.keep(
            "the document 8",
            &doc! { "items": [{ "code": "b" }], "n": 1 },
        );
        let row = doc! { "items": [{ "code": "a" }, { "code": "b" }], "n": 1.0, "k": { "x": 1 } };
        assert_eq!(
            ix.repeats(&row).map(|(h, _)| h),
            Some(Holder::Kept("the document 9".into()))
        );
        let other = doc! { "items": [{ "code": "b" }], "n": 1, "k": { "x": 1 } };
        assert!(ix.repeats(&other).is_none());
        ix.add("1", &other);
        assert_eq!(
            ix.repeats(&other).map(|(h, _)| h),
            Some(Holder::Row("1".into()))
        );
    }

    #[test]
    fn partial_filters_of_other_operators_leave_the_index_unchecked() {
        let ix = index("keys = [\"c\"]\nunique = true\npartial = { n = { \"$gt\" = 1 } }\n");
        assert!(ix.unchecked.as_deref().unwrap().contains("$gt"));
        let mut ix = index("keys = [\"c\"]\nunique = true\npartial = { kind = \"a\" }\n");
        ix.add("1", &doc! { "kind": "a", "c": 1 });
        ix.add("2", &doc! { "kind": "b", "c": 1 });
        ix.add("3", &doc! { "kind": "a", "c": 1 });
        assert_eq!(ix.repeats, 1);
    }
}
