//! Appwrite's unique indexes as its MariaDB compares keys: which rows a unique index refuses
//! because a row written before holds their key — what `check` and a dry run predict of a run.

use std::collections::HashMap;

/// A unique index of an Appwrite table (a mapping's `[[index]]` over top-level columns, made
/// before the load): the server refuses each row that repeats a key a row written before holds
/// (a 409), so the run writes the first and rejects the others under
/// [`RULE_UNIQUE_INDEX`](crate::sink::target::RULE_UNIQUE_INDEX). Keys as MariaDB compares them,
/// told apart from MongoDB's (`check`'s own): a row with a NULL in any of the index's columns holds no
/// key (any number of NULLs), text compares without case, accents or trailing spaces (see
/// [`collation_key`]), numbers by value, an array column by its whole value.
#[derive(Debug)]
pub struct AppwriteUnique {
    pub name: String,
    columns: Vec<String>,
    /// Key → the source key of the row that holds it.
    seen: HashMap<Vec<String>, String>,
    /// Key → the row of the table the run leaves as it is that holds it, said in full (see
    /// [`AppwriteUnique::keep`]).
    kept: HashMap<Vec<String>, String>,
}

impl AppwriteUnique {
    pub fn of(spec: &super::schema::TableSpec) -> Vec<AppwriteUnique> {
        spec.indexes
            .iter()
            .filter(|i| i.kind == "unique")
            .map(|i| AppwriteUnique {
                name: i.key.clone(),
                columns: i.columns.clone(),
                seen: HashMap::new(),
                kept: HashMap::new(),
            })
            .collect()
    }

    /// The columns of the index.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    fn key_of(&self, row: &serde_json::Value) -> Option<Vec<String>> {
        use serde_json::Value as J;
        self.columns
            .iter()
            .map(|c| match row.get(c) {
                None | Some(J::Null) => None,
                Some(J::String(s)) => Some(format!("s:{}", collation_key(s))),
                Some(J::Number(n)) => Some(number_key(n)),
                Some(other) => Some(other.to_string()),
            })
            .collect()
    }

    /// The row's key in this index as one text (with the index's name), or none (a NULL part).
    pub fn key_text(&self, row: &serde_json::Value) -> Option<String> {
        Some(format!(
            "{}\u{0}{}",
            self.name,
            self.key_of(row)?.join("\u{0}")
        ))
    }

    /// The row (as its JSON columns) whose key another holds: who holds it (a row of the table
    /// the run leaves as it is, or a row written before) and the key as shown.
    pub fn repeats(
        &self,
        row: &serde_json::Value,
    ) -> Option<(crate::sink::mongo_unique::Holder, String)> {
        use crate::sink::mongo_unique::Holder;
        let key = self.key_of(row)?;
        let first = match self.kept.get(&key) {
            Some(said) => Holder::Kept(said.clone()),
            None => Holder::Row(self.seen.get(&key)?.clone()),
        };
        Some((first, key.join(", ")))
    }

    /// A row of the table (as the server gives it) that the run leaves as it is (its source row
    /// gone, kept without `--sync-deletes`; before the checkpoint a resume starts after): it
    /// keeps its key whatever row comes, `said` as its holder.
    pub fn keep(&mut self, said: &str, row: &serde_json::Value) {
        if let Some(k) = self.key_of(row) {
            self.kept.entry(k).or_insert_with(|| said.to_string());
        }
    }

    /// Records the key of a row the run writes (`key`: how the row is named, its source key).
    pub fn hold(&mut self, key: &str, row: &serde_json::Value) {
        if let Some(k) = self.key_of(row) {
            self.seen.entry(k).or_insert_with(|| key.to_string());
        }
    }
}

/// Text as MariaDB's case- and accent-insensitive PAD SPACE collations (`utf8mb4_general_ci`,
/// `utf8mb4_unicode_ci`) compare it, near enough: trailing spaces do not count, nor accents
/// (`Ä` is `a`), nor case. Their finer points (ligatures, contractions) are not predicted.
fn collation_key(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    use unicode_normalization::char::is_combining_mark;
    s.trim_end_matches(' ')
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// A JSON number as a key: integers by their digits, other numbers by their value's shortest
/// text (`1.0` and `1` are one key).
fn number_key(n: &serde_json::Number) -> String {
    match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(i), _, _) => format!("n:{i}"),
        (None, Some(u), _) => format!("n:{u}"),
        (None, None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => format!("n:{}", f as i64),
        (None, None, Some(f)) => format!("n:{f:e}"),
        _ => format!("n:{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::mongo_unique::Holder;
    use serde_json::json;

    fn index(columns: &[&str]) -> AppwriteUnique {
        AppwriteUnique {
            name: "ix".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            seen: HashMap::new(),
            kept: HashMap::new(),
        }
    }

    #[test]
    fn nulls_repeat_text_compares_without_case_numbers_by_value() {
        let mut ix = index(&["a", "b"]);
        ix.hold("1", &json!({"a": "X", "b": 1}));
        assert!(ix.repeats(&json!({"a": "x", "b": 1.0})).is_some());
        ix.hold("3", &json!({"a": "Ärger", "b": 5}));
        assert!(ix.repeats(&json!({"a": "arger  ", "b": 5})).is_some());
        assert!(ix.repeats(&json!({"a": " arger", "b": 5})).is_none());
        assert!(ix.repeats(&json!({"a": "x", "b": 2})).is_none());
        ix.hold("2", &json!({"a": null, "b": 1}));
        assert!(ix.repeats(&json!({"a": null, "b": 1})).is_none());
        assert!(ix.repeats(&json!({"b": 1})).is_none());
        assert_eq!(
            ix.repeats(&json!({"a": "X", "b": 1})).unwrap().0,
            Holder::Row("1".into()),
            "the first holder is named"
        );
    }

    #[test]
    fn a_kept_row_holds_its_key_ahead_of_any_row() {
        let mut ix = index(&["a"]);
        ix.keep("the kept row r9", &json!({"a": "K", "$id": "r9"}));
        ix.hold("1", &json!({"a": "k"}));
        assert_eq!(
            ix.repeats(&json!({"a": "K "})).unwrap().0,
            Holder::Kept("the kept row r9".into())
        );
        ix.keep("ignored", &json!({"a": null}));
        assert!(ix.repeats(&json!({"a": null})).is_none());
    }
}
