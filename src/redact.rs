//! Keeps secrets out of output: credentials in connection URLs, libpq connection strings, query
//! parameters, API key headers and JSON fields are replaced by `***` before anything prints or is
//! stored. User names and hosts are kept: they help debugging.
//!
//! Two layers, because error texts from the drivers are not ours to shape:
//! - structure: [`redact_url`] parses one URL or one `key=value` connection string exactly;
//!   [`redact_text`] finds URLs and `key=value` pairs inside free text;
//! - known values: [`register_secret`] / [`register_url_secrets`] remember the passwords and keys
//!   this process was given, and [`redact_text`] removes them (raw, percent-encoded, escaped)
//!   wherever they appear, whatever the text around them looks like.
//!
//! This module only rewrites text; it never prints.

use std::sync::{LazyLock, RwLock};

use regex::Regex;

const MASK: &str = "***";

/// Secrets shorter than this are only removed by structure (a literal scrub of `ab` would eat
/// ordinary words).
const MIN_SECRET_LEN: usize = 4;

static SCHEME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z][A-Za-z0-9+.\-]*://").expect("static regex"));

/// `name = value` with a libpq-style value: single- or double-quoted (backslash escapes, an
/// unterminated quote runs to the end) or bare up to whitespace.
static KEY_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)(?P<eq>\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?|(?:[^\s\\]|\\.)+)"#,
    )
    .expect("static regex")
});

/// `"name": "value"` in JSON text.
static JSON_FIELD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#""(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)"(?P<colon>\s*:\s*)"(?:[^"\\]|\\.)*""#)
        .expect("static regex")
});

/// An API key or authorization header, as a request dump or log line would show it.
static HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)(?P<name>x-appwrite-key|x-api-key|authorization)(?P<sep>["']?\s*[:=]\s*["']?)(?P<scheme>(?:bearer|basic)\s+)?[^\s"',;]+"#,
    )
    .expect("static regex")
});

/// Every form of every registered secret, longest first.
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remembers `secret` so that [`redact_text`] removes it wherever it appears (also percent-encoded
/// and JSON-escaped). Very short secrets are left to the structural rules.
pub fn register_secret(secret: &str) {
    if secret.chars().count() < MIN_SECRET_LEN {
        return;
    }
    let decoded = percent_decode(secret);
    let mut forms = Vec::new();
    for s in [secret, decoded.as_str()] {
        forms.push(s.to_string());
        forms.push(percent_encode(s, false));
        forms.push(lowercase_escapes(&percent_encode(s, false)));
        forms.push(percent_encode(s, true));
        let json = serde_json::to_string(s).unwrap_or_default();
        forms.push(strip_quotes(&json).to_string());
        forms.push(strip_quotes(&format!("{s:?}")).to_string());
        forms.push(
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', "&#39;"),
        );
    }
    let mut all = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    for f in forms {
        if f.chars().count() >= MIN_SECRET_LEN && !all.contains(&f) {
            all.push(f);
        }
    }
    all.sort_by_key(|f| std::cmp::Reverse(f.len()));
}

/// Registers the password and every credential-bearing parameter of a URL or connection string.
pub fn register_url_secrets(url: &str) {
    for s in url_secrets(url) {
        register_secret(&s);
    }
}

/// The secret parts of one URL or libpq connection string: the userinfo password and the values
/// of credential-bearing parameters.
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(m) = SCHEME.find(url).filter(|m| m.start() == 0) {
        let rest = &url[m.end()..];
        let host_start = match userinfo_end(rest, true) {
            Some(at) => {
                if let Some((_, pass)) = rest[..at].split_once(':') {
                    out.push(pass.to_string());
                }
                at + 1
            }
            None => 0,
        };
        let after = &rest[host_start..];
        if let Some(q) = after.find('?') {
            let query = &after[q + 1..];
            let query = &query[..query.find('#').unwrap_or(query.len())];
            for pair in query.split('&') {
                if let Some((k, v)) = pair.split_once('=')
                    && sensitive_param(&percent_decode(k))
                {
                    out.push(v.to_string());
                    out.push(percent_decode(&v.replace('+', " ")));
                }
            }
        }
        return out;
    }
    for c in KEY_VALUE.captures_iter(url) {
        if sensitive_name(&c["name"]) {
            out.push(unquote(&c["value"]));
        }
    }
    out
}

/// Returns one URL (or libpq `key=value` connection string) with every credential replaced by
/// `***`; the user name, hosts, path and other parameters are kept.
/// `text` with every line longer than `max` characters cut there (and marked): a parser's
/// message quoting a 30 MB line of a file shows its start, not the whole line.
pub fn clip_lines(text: &str, max: usize) -> String {
    text.lines()
        .map(|l| {
            if l.chars().count() <= max {
                l.to_string()
            } else {
                let cut: String = l.chars().take(max).collect();
                format!("{cut}… ({} more characters)", l.chars().count() - max)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Longest line of a parse error quoted from a user's file.
pub const QUOTED_LINE_MAX: usize = 160;

pub fn redact_url(url: &str) -> String {
    let url = scrub_registered(url);
    match SCHEME.find(&url).filter(|m| m.start() == 0) {
        Some(m) => {
            let mut out = url[..m.end()].to_string();
            out.push_str(&redact_authority_and_query(&url[m.end()..], true));
            out
        }
        None => redact_pairs(&url),
    }
}

/// Replaces every credential found in `text`: registered secrets, URL passwords and credential
/// parameters, `password=…` style pairs, JSON fields and API key headers.
pub fn redact_text(text: &str) -> String {
    let text = scrub_registered(text);
    let text = redact_urls_in(&text);
    let text = redact_pairs(&text);
    let text = JSON_FIELD.replace_all(&text, |c: &regex::Captures<'_>| {
        if sensitive_name(&c["name"]) {
            format!("\"{}\"{}\"{MASK}\"", &c["name"], &c["colon"])
        } else {
            c[0].to_string()
        }
    });
    HEADER
        .replace_all(&text, |c: &regex::Captures<'_>| {
            let scheme = c.name("scheme").map(|m| m.as_str()).unwrap_or_default();
            format!("{}{}{scheme}{MASK}", &c["name"], &c["sep"])
        })
        .into_owned()
}

/// A writer that redacts what passes through it (one `write` per log event, as tracing writes).
pub struct RedactingWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact_text(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Removes every registered secret (an API key, a password) from `text`, leaving the rest as it
/// is: for data shown in output (a source value that happens to hold a key), where the
/// structural rules of [`redact_text`] would mangle ordinary values.
pub fn scrub_secrets(text: &str) -> String {
    scrub_registered(text)
}

fn scrub_registered(text: &str) -> String {
    let secrets = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    let mut out = text.to_string();
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

/// Every `scheme://…` in free text. A URL's reach ends at the end of its line or at the next URL;
/// within it, the userinfo ends at the last `@` that is followed by a host.
fn redact_urls_in(text: &str) -> String {
    let starts: Vec<(usize, usize)> = SCHEME
        .find_iter(text)
        .map(|m| (m.start(), m.end()))
        .collect();
    if starts.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..starts[0].0]);
    for (i, &(start, body)) in starts.iter().enumerate() {
        let next = starts.get(i + 1).map(|s| s.0).unwrap_or(text.len());
        let line_end = text[body..next]
            .find('\n')
            .map(|n| body + n)
            .unwrap_or(next);
        out.push_str(&text[start..body]);
        out.push_str(&redact_authority_and_query(&text[body..line_end], false));
        out.push_str(&text[line_end..next]);
    }
    out
}

/// Where the userinfo of `rest` (the URL after `://`) ends: the last `@` followed by a host,
/// provided what comes before starts with a user name (no `/`, `?`, `#` or blank before the
/// first `:`). Passwords may hold `@`, `/`, `?` and blanks, so the last `@` is the safe one.
fn userinfo_end(rest: &str, exact: bool) -> Option<usize> {
    for (at, _) in rest.rmatch_indices('@') {
        let next = rest[at + 1..].chars().next();
        if !exact && next.is_none_or(char::is_whitespace) {
            continue;
        }
        let info = &rest[..at];
        let user = info.split_once(':').map(|(u, _)| u).unwrap_or(info);
        if user.contains(['/', '?', '#']) || user.contains(char::is_whitespace) {
            continue;
        }
        return Some(at);
    }
    None
}

/// Redacts the part of a URL after `://`. `exact`: the text is the URL and nothing else (a query
/// value runs to the next `&`); otherwise the URL also ends at a blank.
fn redact_authority_and_query(rest: &str, exact: bool) -> String {
    let mut out = String::with_capacity(rest.len());
    let mut tail = rest;
    if let Some(at) = userinfo_end(rest, exact) {
        match rest[..at].split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push(':');
                out.push_str(MASK);
            }
            None => out.push_str(&rest[..at]),
        }
        out.push('@');
        tail = &rest[at + 1..];
    }
    let stop = |c: char| c == '?' || c == '#' || (!exact && c.is_whitespace());
    let path_end = tail.find(stop).unwrap_or(tail.len());
    out.push_str(&tail[..path_end]);
    tail = &tail[path_end..];
    if let Some(query) = tail.strip_prefix('?') {
        let end = if exact {
            query.find('#')
        } else {
            query.find(|c: char| c == '#' || c.is_whitespace())
        }
        .unwrap_or(query.len());
        out.push('?');
        out.push_str(&redact_query(&query[..end]));
        tail = &query[end..];
    }
    out.push_str(tail);
    out
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if sensitive_param(&percent_decode(k)) && !v.starts_with(MASK) => {
                format!("{k}={MASK}")
            }
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `password=…`, `sslpassword='…'`, `api_key=…` pairs (libpq connection strings, log fields).
fn redact_pairs(text: &str) -> String {
    KEY_VALUE
        .replace_all(text, |c: &regex::Captures<'_>| {
            let value = &c["value"];
            if sensitive_name(&c["name"]) && !value.starts_with(MASK) {
                format!("{}{}{MASK}", &c["name"], &c["eq"])
            } else {
                c[0].to_string()
            }
        })
        .into_owned()
}

/// A name that holds a credential wherever it appears (free text, JSON, connection strings).
fn sensitive_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "pwd"
        || n == "authmechanismproperties"
        || [
            "password",
            "passwd",
            "secret",
            "token",
            "credential",
            "apikey",
            "api_key",
            "api-key",
            "appwrite-key",
            "appwrite_key",
        ]
        .iter()
        .any(|w| n.contains(w))
}

/// A URL query parameter that holds a credential: the names above, and any name with `key`.
fn sensitive_param(name: &str) -> bool {
    sensitive_name(name) || name.to_ascii_lowercase().contains("key")
}

fn unquote(value: &str) -> String {
    let inner = match value.chars().next() {
        Some(q @ ('\'' | '"')) => {
            let v = &value[1..];
            v.strip_suffix(q).unwrap_or(v)
        }
        _ => value,
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2)))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but RFC 3986 unreserved characters; `form`: a blank becomes `+`.
fn percent_encode(s: &str, form: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' if form => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `"…"` → `…` (one quote each side).
fn strip_quotes(s: &str) -> &str {
    let s = s.strip_prefix('"').unwrap_or(s);
    s.strip_suffix('"').unwrap_or(s)
}

fn hex(b: Option<&u8>) -> Option<u8> {
    (*b? as char).to_digit(16).map(|d| d as u8)
}

/// `%2F` → `%2f`, leaving the other characters alone.
fn lowercase_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending = 0;
    for c in s.chars() {
        if c == '%' {
            pending = 2;
            out.push(c);
        } else if pending > 0 {
            pending -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A URL's hosts and path (`host:port/db`), never its user, password or options: where it points.
pub fn endpoint_of(url: &str) -> String {
    // Parsed from the redacted form: a password (which may hold '/', '@', '?' and blanks
    // unescaped) is `***` there, so the first '?' and the last '@' are the URL's own.
    let url = redact_url(url);
    let Some((_, rest)) = url.split_once("://") else {
        return "?".into();
    };
    let rest = rest.split('?').next().unwrap_or_default();
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    if path.is_empty() {
        hosts.to_string()
    } else {
        format!("{hosts}/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every fragment of the test passwords: none may survive in any output.
    fn assert_hidden(out: &str, fragments: &[&str]) {
        for f in fragments {
            assert!(!out.contains(f), "`{f}` survived in `{out}`");
        }
    }

    #[test]
    fn password_in_url_is_hidden() {
        assert_eq!(
            redact_url("postgres://app:s3cr3t@db.example.org:5432/registry"),
            "postgres://app:***@db.example.org:5432/registry"
        );
        assert_eq!(
            redact_url("mongodb+srv://root:p%40ss@cluster0/x?retryWrites=true"),
            "mongodb+srv://root:***@cluster0/x?retryWrites=true"
        );
        assert_eq!(
            redact_url("postgresql://app:pw12@h/db"),
            "postgresql://app:***@h/db"
        );
        assert_eq!(
            redact_url("https://admin:hunter22@appwrite.example.org/v1"),
            "https://admin:***@appwrite.example.org/v1"
        );
    }

    #[test]
    fn urls_without_password_are_unchanged() {
        for url in [
            "postgres://postgres@127.0.0.1:55432/postgres",
            "mongodb://127.0.0.1:27017",
            "mongodb://127.0.0.1:57017/?replicaSet=rs0",
            "http://127.0.0.1:58080/v1",
            "postgres://u@h/db?sslmode=require&application_name=cutover",
        ] {
            assert_eq!(redact_url(url), url);
            assert_eq!(redact_text(url), url);
        }
    }

    #[test]
    fn unescaped_at_and_slash_in_the_password_end_at_the_last_at() {
        let url = "postgres://u:p@ss/w@host/db";
        assert_eq!(redact_url(url), "postgres://u:***@host/db");
        let msg = format!("cannot connect to the source {url}: connection refused");
        let out = redact_text(&msg);
        assert_eq!(
            out,
            "cannot connect to the source postgres://u:***@host/db: connection refused"
        );
    }

    #[test]
    fn blanks_and_question_marks_in_the_userinfo_are_hidden() {
        let url = "postgres://role:Kx7q/Vb2m@Rn4t Hw8p?Jd3s@127.0.0.1:5432/db";
        let frags = ["Kx7q", "Vb2m", "Rn4t", "Hw8p", "Jd3s"];
        assert_eq!(redact_url(url), "postgres://role:***@127.0.0.1:5432/db");
        let out = redact_text(&format!("error: cannot connect to {url}: timed out"));
        assert_hidden(&out, &frags);
        assert!(out.contains("role"), "{out}");
        assert!(out.contains("127.0.0.1:5432"), "{out}");
    }

    #[test]
    fn password_query_parameters_are_hidden() {
        assert_eq!(
            redact_url("postgres://app@h/db?password=s%2Fcr%40t%20x&sslmode=require"),
            "postgres://app@h/db?password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://h/db?sslmode=verify-full&sslpassword=keypass9"),
            "postgres://h/db?sslmode=verify-full&sslpassword=***"
        );
        let out = redact_text("connect postgres://app@h/db?password=zz9yy8xx: refused");
        assert_eq!(out, "connect postgres://app@h/db?password=*** refused");
    }

    #[test]
    fn mongodb_credential_options_are_hidden() {
        let url = "mongodb://AKIA@cluster/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:FQoG9tok&tlsCertificateKeyFilePassword=pem9pass&replicaSet=rs0";
        let out = redact_url(url);
        assert_eq!(
            out,
            "mongodb://AKIA@cluster/?authMechanism=MONGODB-AWS&authMechanismProperties=***&tlsCertificateKeyFilePassword=***&replicaSet=rs0"
        );
        assert_hidden(&redact_text(url), &["FQoG9tok", "pem9pass"]);
    }

    #[test]
    fn token_secret_and_key_parameters_are_hidden() {
        let out =
            redact_url("https://h/v1?apiKey=k1k2k3&access_token=t1t2&client_secret=s1s2&project=p");
        assert_eq!(
            out,
            "https://h/v1?apiKey=***&access_token=***&client_secret=***&project=p"
        );
    }

    #[test]
    fn libpq_connection_strings_are_hidden() {
        let conn = "host=db.example.org port=5432 user=app password='a b\\'c' dbname=registry";
        let out = redact_url(conn);
        assert_eq!(
            out,
            "host=db.example.org port=5432 user=app password=*** dbname=registry"
        );
        assert_eq!(
            redact_url("host=h password=plain9 sslpassword = \"q q\""),
            "host=h password=*** sslpassword = ***"
        );
        let out = redact_text("expected a postgres:// URL, got `host=h password='x y z9'`");
        assert_hidden(&out, &["x y z9", "z9"]);
    }

    #[test]
    fn unterminated_quotes_hide_to_the_end() {
        assert_eq!(redact_url("host=h password='a b c"), "host=h password=***");
    }

    #[test]
    fn json_fields_and_headers_are_hidden() {
        let out = redact_text(r#"{"user":"app","password":"p\"w9","apiKey":"k9k9"}"#);
        assert_eq!(out, r#"{"user":"app","password":"***","apiKey":"***"}"#);
        let out =
            redact_text("request headers: X-Appwrite-Key: standard_99aa, x-appwrite-project: p");
        assert_eq!(
            out,
            "request headers: X-Appwrite-Key: ***, x-appwrite-project: p"
        );
        assert_eq!(
            redact_text("authorization: Bearer eyJhbGc9"),
            "authorization: Bearer ***"
        );
    }

    #[test]
    fn registered_secrets_are_hidden_in_every_form() {
        let secret = "Reg1st/er@d ?sec";
        register_url_secrets(&format!(
            "postgres://u@h/db?password={}",
            percent_encode(secret, false)
        ));
        for form in [
            secret.to_string(),
            percent_encode(secret, false),
            percent_encode(secret, true),
            lowercase_escapes(&percent_encode(secret, false)),
            serde_json::to_string(secret).unwrap(),
        ] {
            let out = redact_text(&format!("the driver said: {form} is wrong"));
            assert!(!out.contains("Reg1st"), "{out}");
            assert!(!out.contains("sec is"), "{out}");
        }
    }

    #[test]
    fn short_secrets_are_not_scrubbed_as_words() {
        register_secret("ab");
        assert_eq!(redact_text("about tabs"), "about tabs");
    }

    #[test]
    fn url_secrets_finds_userinfo_and_parameters() {
        assert_eq!(url_secrets("postgres://u:p@ss/w@h/db"), vec!["p@ss/w"]);
        let s = url_secrets("postgres://u@h/db?password=a%20b&x=1");
        assert!(
            s.contains(&"a%20b".to_string()) && s.contains(&"a b".to_string()),
            "{s:?}"
        );
        assert_eq!(url_secrets("host=h password='a b'"), vec!["a b"]);
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for t in [
            "patients: 10 rows read, 10 written",
            "duplicate key=42 in collection patients",
            "see https://docs.example.org/page?lang=en for help",
            "sort_key=id",
        ] {
            assert_eq!(redact_text(t), t);
        }
    }

    #[test]
    fn redacting_writer_redacts_each_write() {
        use std::io::Write;
        let mut w = RedactingWriter(Vec::new());
        w.write_all(b"connect postgres://u:pw99@h/db\n").unwrap();
        assert_eq!(
            String::from_utf8(w.0).unwrap(),
            "connect postgres://u:***@h/db\n"
        );
    }
}
