//! JSON text → a JSON tree, keeping what a plain parse hides: each number as written (a parse into
//! `f64` rounds integers past 64 bits, decimals past 17 digits, and `1e400` does not parse at
//! all), and an object key given twice. PostgreSQL's `json` keeps its text as written
//! (`{"a":1,"a":2}`); a parse keeps the last value, as `jsonb` does on input. Pure; no I/O.
//!
//! What a number becomes in BSON is decided elsewhere (`transform::json_to_bson`); this module
//! only reads the text (RFC 8259).

use std::collections::HashMap;
use std::fmt;

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number's text as written (`-0.0`, `1E+2`, `18446744073709551617`): its exact value.
    Number(String),
    String(String),
    Array(Vec<Json>),
    /// Members in text order. A key given twice keeps its first place and its last value.
    Object(Vec<(String, Json)>),
}

/// A parsed JSON text and the first object key found twice in it, if any (as its path, e.g.
/// `a.b` or `items[2].id`). The value keeps the last of the duplicates.
#[derive(Debug, PartialEq)]
pub struct Parsed {
    pub value: Json,
    pub duplicate: Option<String>,
}

/// Why a text is not JSON, and where (1-based line and column, in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: &'static str,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.message, self.line, self.column
        )
    }
}

impl std::error::Error for ParseError {}

/// Deeper nesting is refused rather than risking the stack (serde_json's limit; MongoDB's own is
/// 100 levels).
pub const MAX_DEPTH: usize = 128;

/// The message of a value nested deeper than its limit.
pub const TOO_DEEP: &str = "nested deeper than a document can hold here";

/// MongoDB's limit on a document's nesting (the top document is level 1; each document or array
/// inside adds one): measured on mongod, which refuses a document past it ("exceeds 180 levels
/// of nesting").
pub const DOCUMENT_LEVELS: usize = 180;

/// Objects with more members than this find duplicate keys through a hash map.
const LINEAR_KEYS: usize = 16;

/// Parses `text`, keeping each number's text and noting the first duplicate key.
pub fn parse(text: &str) -> Result<Parsed, ParseError> {
    parse_within(text, MAX_DEPTH)
}

/// [`parse`], refusing ([`TOO_DEEP`]) a value nested more than `limit` (at most [`MAX_DEPTH`])
/// levels.
pub fn parse_within(text: &str, limit: usize) -> Result<Parsed, ParseError> {
    let mut p = Parser {
        text,
        pos: 0,
        depth: 0,
        limit: limit.min(MAX_DEPTH),
        path: String::new(),
        duplicate: None,
    };
    p.skip_ws();
    let value = p.value()?;
    p.skip_ws();
    if p.pos != text.len() {
        return Err(p.error("trailing characters"));
    }
    Ok(Parsed {
        value,
        duplicate: p.duplicate,
    })
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
    limit: usize,
    /// Path of the value being read, for duplicate keys.
    path: String,
    duplicate: Option<String>,
}

impl Parser<'_> {
    fn error(&self, message: &'static str) -> ParseError {
        let before = &self.text[..self.pos.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        ParseError {
            message,
            line,
            column,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, ParseError> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("expected a JSON value"))
        }
    }

    fn value(&mut self) -> Result<Json, ParseError> {
        match self.peek() {
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number().map(Json::Number),
            Some(_) => Err(self.error("expected a JSON value")),
            None => Err(self.error("EOF while parsing a value")),
        }
    }

    fn nested(
        &mut self,
        read: fn(&mut Self) -> Result<Json, ParseError>,
    ) -> Result<Json, ParseError> {
        if self.depth >= self.limit {
            return Err(self.error(TOO_DEEP));
        }
        self.depth += 1;
        let value = read(self);
        self.depth -= 1;
        value
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, returned as written.
    fn number(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number"));
            }
            self.digits();
        }
        Ok(self.text[start..self.pos].to_string())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.pos += 1; // the opening quote
        let mut out = String::new();
        loop {
            // Copy the run of plain characters up to the next quote, escape or control character.
            let rest = &self.text.as_bytes()[self.pos..];
            let run = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .unwrap_or(rest.len());
            out.push_str(&self.text[self.pos..self.pos + run]);
            self.pos += run;
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.escape()?;
                    out.push(c);
                }
                Some(_) => return Err(self.error("control character in a string")),
                None => return Err(self.error("EOF while parsing a string")),
            }
        }
    }

    /// One escape after its backslash.
    fn escape(&mut self) -> Result<char, ParseError> {
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                let first = self.hex4()?;
                return match first {
                    0xD800..=0xDBFF => {
                        if !self.text[self.pos..].starts_with("\\u") {
                            return Err(self.error("lone leading surrogate in hex escape"));
                        }
                        self.pos += 2;
                        let second = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&second) {
                            return Err(self.error("lone leading surrogate in hex escape"));
                        }
                        let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                        char::from_u32(code).ok_or_else(|| self.error("invalid unicode escape"))
                    }
                    0xDC00..=0xDFFF => Err(self.error("lone trailing surrogate in hex escape")),
                    c => char::from_u32(c).ok_or_else(|| self.error("invalid unicode escape")),
                };
            }
            Some(_) => return Err(self.error("invalid escape")),
            None => return Err(self.error("EOF while parsing a string")),
        };
        self.pos += 1;
        Ok(c)
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let digits = self
            .text
            .get(self.pos..self.pos + 4)
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.error("invalid unicode escape"))?;
        let code = u32::from_str_radix(digits, 16).map_err(|_| self.error("invalid escape"))?;
        self.pos += 4;
        Ok(code)
    }

    fn array(&mut self) -> Result<Json, ParseError> {
        self.pos += 1; // [
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Array(items));
        }
        let base = self.path.len();
        loop {
            use fmt::Write;
            let _ = write!(self.path, "[{}]", items.len());
            self.skip_ws();
            items.push(self.value()?);
            self.path.truncate(base);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                Some(_) => return Err(self.error("expected `,` or `]`")),
                None => return Err(self.error("EOF while parsing a list")),
            }
        }
    }

    fn object(&mut self) -> Result<Json, ParseError> {
        self.pos += 1; // {
        let mut members: Vec<(String, Json)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Object(members));
        }
        let base = self.path.len();
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("key must be a string"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.error("expected `:`"));
            }
            self.pos += 1;
            self.skip_ws();
            if base > 0 {
                self.path.push('.');
            }
            self.path.push_str(&key);
            let value = self.value()?;
            let seen = if members.len() < LINEAR_KEYS {
                members.iter().position(|(k, _)| *k == key)
            } else {
                if index.is_empty() {
                    index = members
                        .iter()
                        .enumerate()
                        .map(|(i, (k, _))| (k.clone(), i))
                        .collect();
                }
                index.get(&key).copied()
            };
            match seen {
                Some(i) => {
                    members[i].1 = value;
                    if self.duplicate.is_none() {
                        self.duplicate = Some(self.path.clone());
                    }
                }
                None => {
                    if !index.is_empty() {
                        index.insert(key.clone(), members.len());
                    }
                    members.push((key, value));
                }
            }
            self.path.truncate(base);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Object(members));
                }
                Some(_) => return Err(self.error("expected `,` or `}`")),
                None => return Err(self.error("EOF while parsing an object")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> Json {
        Json::Number(s.into())
    }

    /// The same value as serde_json reads it, for texts whose numbers serde_json reads exactly.
    fn to_serde(j: &Json) -> serde_json::Value {
        match j {
            Json::Null => serde_json::Value::Null,
            Json::Bool(b) => serde_json::Value::Bool(*b),
            Json::Number(n) => serde_json::from_str(n).unwrap(),
            Json::String(s) => serde_json::Value::String(s.clone()),
            Json::Array(a) => serde_json::Value::Array(a.iter().map(to_serde).collect()),
            Json::Object(o) => {
                serde_json::Value::Object(o.iter().map(|(k, v)| (k.clone(), to_serde(v))).collect())
            }
        }
    }

    #[test]
    fn duplicate_keys_are_found_and_the_last_value_kept() {
        let p = parse(r#"{"a":1,"a":2}"#).unwrap();
        assert_eq!(p.value, Json::Object(vec![("a".into(), num("2"))]));
        assert_eq!(p.duplicate.as_deref(), Some("a"));
        let p = parse(r#"{"x":[{"id":1},{"id":2,"id":3}],"y":{"b":{"c":0,"c":1}}}"#).unwrap();
        assert_eq!(p.duplicate.as_deref(), Some("x[1].id"), "the first one");
        assert_eq!(to_serde(&p.value)["y"]["b"]["c"], 1);
    }

    #[test]
    fn duplicates_in_large_objects_keep_their_first_place() {
        let members: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let text = format!(
            "{{{},\"k3\":\"again\",\"z\":{{\"k\":1,\"k\":2}}}}",
            members.join(",")
        );
        let p = parse(&text).unwrap();
        assert_eq!(p.duplicate.as_deref(), Some("k3"));
        let Json::Object(o) = &p.value else { panic!() };
        assert_eq!(o.len(), 41);
        assert_eq!(o[3], ("k3".into(), Json::String("again".into())));
        assert_eq!(o[40].0, "z");
    }

    #[test]
    fn values_without_duplicates_parse_as_serde_json_parses_them() {
        for text in [
            r#"{"a":[1,-2,2.5,18446744073709551615,1e300],"b":{"a":1},"c":null,"d":"é"}"#,
            "null",
            " [ ] ",
            r#"{"a":{"a":{"a":1}}}"#,
            r#" { "s" : "q\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00 x" , "t" : [true,false] } "#,
            "{}",
            "\"\"",
        ] {
            let p = parse(text).unwrap();
            assert_eq!(p.duplicate, None, "{text}");
            assert_eq!(
                to_serde(&p.value),
                serde_json::from_str::<serde_json::Value>(text).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn numbers_keep_their_text() {
        let p = parse("[18446744073709551617, 1e400, -0.0, 1E+2, 0.1000, 5e-324]").unwrap();
        assert_eq!(
            p.value,
            Json::Array(
                [
                    "18446744073709551617",
                    "1e400",
                    "-0.0",
                    "1E+2",
                    "0.1000",
                    "5e-324"
                ]
                .map(num)
                .to_vec()
            )
        );
    }

    #[test]
    fn invalid_json_is_an_error() {
        for text in [
            "{",
            "1 2",
            r#"{"a":1,}"#,
            "[1,]",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "NaN",
            "tru",
            "\"a",
            "\"\t\"",
            r#""\x""#,
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\u12""#,
            "{1:2}",
            r#"{"a" 1}"#,
            "",
            "   ",
        ] {
            assert!(parse(text).is_err(), "{text:?}");
        }
        let e = parse("{\n  \"a\": tru }").unwrap_err();
        assert_eq!((e.line, e.column), (2, 8), "{e}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = "[".repeat(100_000);
        assert_eq!(parse(&deep).unwrap_err().message, TOO_DEEP);
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
    }
}
