//! Keeps secrets out of output: credentials in connection URLs are replaced before anything prints.

use std::sync::LazyLock;

use regex::Regex;

static URL_CREDENTIALS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/\s]*)(:(?P<pass>[^@/\s]*))?@")
        .expect("static regex")
});

/// Returns `url` with any password replaced by `***` (the user name is kept, it helps debugging).
pub fn redact_url(url: &str) -> String {
    redact_text(url)
}

/// Replaces the password of every `scheme://user:password@` found in `text`.
pub fn redact_text(text: &str) -> String {
    URL_CREDENTIALS
        .replace_all(text, |caps: &regex::Captures<'_>| {
            let scheme = &caps["scheme"];
            let user = &caps["user"];
            match caps.name("pass") {
                Some(_) => format!("{scheme}{user}:***@"),
                None => format!("{scheme}{user}@"),
            }
        })
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn urls_without_password_are_unchanged() {
        let url = "postgres://postgres@127.0.0.1:55432/postgres";
        assert_eq!(redact_url(url), url);
        assert_eq!(
            redact_url("mongodb://127.0.0.1:27017"),
            "mongodb://127.0.0.1:27017"
        );
    }

    #[test]
    fn text_with_embedded_url_is_redacted() {
        let msg = "cannot connect to postgres://u:hunter2@h/db: refused";
        assert!(!redact_text(msg).contains("hunter2"));
    }
}
