//! JSON text → a JSON value, noticing what a plain parse hides: an object key given twice.
//! PostgreSQL's `json` keeps its text as written (`{"a":1,"a":2}`); a parse keeps the last value
//! silently, as `jsonb` does on input. Pure; no I/O.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A parsed JSON text and the first object key found twice in it, if any (as its path, e.g.
/// `a.b` or `items[2].id`). The value keeps the last of the duplicates.
#[derive(Debug, PartialEq)]
pub struct Parsed {
    pub value: Value,
    pub duplicate: Option<String>,
}

/// Parses `text`, keeping track of duplicate object keys.
pub fn parse(text: &str) -> Result<Parsed, serde_json::Error> {
    let mut duplicate = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Seed {
        path: String::new(),
        duplicate: &mut duplicate,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(Parsed { value, duplicate })
}

/// Builds one JSON value at `path`, noting the first duplicate key below it.
struct Seed<'a> {
    path: String,
    duplicate: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Number(i.into()))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(Value::Number(u.into()))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Number::from_f64(f).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let seed = Seed {
                path: format!("{}[{}]", self.path, items.len()),
                duplicate: &mut *self.duplicate,
            };
            match seq.next_element_seed(seed)? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            let value = map.next_value_seed(Seed {
                path: path.clone(),
                duplicate: &mut *self.duplicate,
            })?;
            if object.insert(key, value).is_some() && self.duplicate.is_none() {
                *self.duplicate = Some(path);
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_found_and_the_last_value_kept() {
        let p = parse(r#"{"a":1,"a":2}"#).unwrap();
        assert_eq!(p.value, serde_json::json!({ "a": 2 }));
        assert_eq!(p.duplicate.as_deref(), Some("a"));
        let p = parse(r#"{"x":[{"id":1},{"id":2,"id":3}],"y":{"b":{"c":0,"c":1}}}"#).unwrap();
        assert_eq!(p.duplicate.as_deref(), Some("x[1].id"), "the first one");
        assert_eq!(p.value["y"]["b"]["c"], 1);
    }

    #[test]
    fn values_without_duplicates_parse_as_serde_json_parses_them() {
        for text in [
            r#"{"a":[1,-2,2.5,18446744073709551615,1e300],"b":{"a":1},"c":null,"d":"é"}"#,
            "null",
            " [ ] ",
            r#"{"a":{"a":{"a":1}}}"#,
        ] {
            let p = parse(text).unwrap();
            assert_eq!(p.duplicate, None, "{text}");
            assert_eq!(
                p.value,
                serde_json::from_str::<Value>(text).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn invalid_json_is_an_error() {
        assert!(parse("{").is_err());
        assert!(parse("1 2").is_err());
        assert!(parse(r#"{"a":1,}"#).is_err());
    }
}
