//! A small JSON reader for PostgreSQL's own JSON output (`to_jsonb(col)::text`, or a `json`
//! column's own text, which `to_jsonb` cannot always convert: `\u0000`, `1e100000000000`) that keeps every
//! number as its text, so that the comparer sees the exact value PostgreSQL holds. Kept apart from
//! `transform::json` on purpose: verify must not share the converter's parser.

/// A JSON value; numbers are their text as written.
#[derive(Debug, Clone, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<J>),
    Object(Vec<(String, J)>),
}

/// Parses one JSON document (surrounding whitespace allowed).
pub fn parse(text: &str) -> Result<J, String> {
    let mut r = Reader {
        s: text.as_bytes(),
        at: 0,
    };
    let v = r.value()?;
    r.blank();
    if r.at != r.s.len() {
        return Err(format!("trailing text at byte {}", r.at));
    }
    Ok(v)
}

struct Reader<'a> {
    s: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn blank(&mut self) {
        while self.at < self.s.len() && matches!(self.s[self.at], b' ' | b'\t' | b'\n' | b'\r') {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn expect(&mut self, b: u8) -> Result<(), String> {
        if self.peek() == Some(b) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected `{}` at byte {}", b as char, self.at))
        }
    }

    fn word(&mut self, w: &str, v: J) -> Result<J, String> {
        if self.s[self.at..].starts_with(w.as_bytes()) {
            self.at += w.len();
            Ok(v)
        } else {
            Err(format!("unexpected text at byte {}", self.at))
        }
    }

    fn value(&mut self) -> Result<J, String> {
        self.blank();
        match self.peek() {
            None => Err("unexpected end".into()),
            Some(b'n') => self.word("null", J::Null),
            Some(b't') => self.word("true", J::Bool(true)),
            Some(b'f') => self.word("false", J::Bool(false)),
            Some(b'"') => self.string().map(J::String),
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                self.blank();
                if self.peek() == Some(b']') {
                    self.at += 1;
                    return Ok(J::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    self.blank();
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        _ => {
                            self.expect(b']')?;
                            return Ok(J::Array(items));
                        }
                    }
                }
            }
            Some(b'{') => {
                self.at += 1;
                let mut members = Vec::new();
                self.blank();
                if self.peek() == Some(b'}') {
                    self.at += 1;
                    return Ok(J::Object(members));
                }
                loop {
                    self.blank();
                    let k = self.string()?;
                    self.blank();
                    self.expect(b':')?;
                    let v = self.value()?;
                    // A key given twice keeps its first place and its last value, as `jsonb`
                    // does on input (a `json` column's text may hold both).
                    match members.iter_mut().find(|(m, _)| *m == k) {
                        Some(member) => member.1 = v,
                        None => members.push((k, v)),
                    }
                    self.blank();
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        _ => {
                            self.expect(b'}')?;
                            return Ok(J::Object(members));
                        }
                    }
                }
            }
            Some(_) => {
                let start = self.at;
                while self.at < self.s.len()
                    && matches!(
                        self.s[self.at],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.at += 1;
                }
                if start == self.at {
                    return Err(format!("unexpected text at byte {start}"));
                }
                Ok(J::Number(
                    String::from_utf8_lossy(&self.s[start..self.at]).into_owned(),
                ))
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .s
            .get(self.at..self.at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("bad \\u escape at byte {}", self.at))?;
        self.at += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err("unterminated string".into());
            };
            self.at += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err("unterminated string".into());
                    };
                    self.at += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi)
                                && self.s[self.at..].starts_with(b"\\u")
                            {
                                self.at += 2;
                                let lo = self.hex4()?;
                                0x10000 + ((hi - 0xd800) << 10) + (lo.wrapping_sub(0xdc00) & 0x3ff)
                            } else {
                                hi
                            };
                            char::from_u32(code).unwrap_or('\u{fffd}')
                        }
                        _ => return Err(format!("bad escape at byte {}", self.at)),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                other => out.push(other),
            }
        }
        String::from_utf8(out).map_err(|_| "invalid UTF-8 in a string".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_text() {
        let v = parse(r#"{"a": [1.50, -2e400, 123456789012345678901234567890], "b": "x\"\u00e9\ud83d\ude00"}"#)
            .unwrap();
        assert_eq!(
            v,
            J::Object(vec![
                (
                    "a".into(),
                    J::Array(vec![
                        J::Number("1.50".into()),
                        J::Number("-2e400".into()),
                        J::Number("123456789012345678901234567890".into()),
                    ])
                ),
                ("b".into(), J::String("x\"é😀".into())),
            ])
        );
        assert!(parse("[1,").is_err());
        assert!(parse("1 2").is_err());
    }
}
