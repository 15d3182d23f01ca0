//! Per-file Appwrite permission templates (`[file.appwrite] file_permissions`): strings such as
//! `read("user:{patientId}")` whose `{path}` placeholders name top-level fields of the mapped
//! document, filled per row. Checked once when the mapping loads (the action, the shape, that
//! every placeholder names a field); filled per row by a pure function that says why a row
//! cannot have its permission (a value null or missing, or one no role can hold).
//!
//! This module must not know how a value is looked up (the caller passes a lookup).

/// The actions a file's permission may grant. Appwrite takes no `create` on a file, and stores
/// `write` as `update` and `delete` (a file would then never read as it was asked): list those.
pub const FILE_ACTIONS: [&str; 3] = ["read", "update", "delete"];

/// One template taken apart: the text between placeholders and the placeholders' paths, in
/// order (`parts.len() == paths.len() + 1`).
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<String>,
    paths: Vec<String>,
}

impl Template {
    /// Parses `text`; why it is not a template (an unclosed `{`, an empty `{}`, a `}` alone).
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut paths = Vec::new();
        let mut rest = text;
        loop {
            match (rest.find('{'), rest.find('}')) {
                (None, None) => break,
                (Some(open), close) if close.is_none_or(|c| c > open) => {
                    let after = &rest[open + 1..];
                    let Some(end) = after.find('}') else {
                        return Err(format!("`{text}`: a `{{` is not closed"));
                    };
                    let path = &after[..end];
                    if path.is_empty() || path.contains('{') {
                        return Err(format!(
                            "`{text}`: a placeholder must name a field, as in {{patientId}}"
                        ));
                    }
                    parts.push(rest[..open].to_string());
                    paths.push(path.trim().to_string());
                    rest = &after[end + 1..];
                }
                _ => return Err(format!("`{text}`: a `}}` without its `{{`")),
            }
        }
        parts.push(rest.to_string());
        Ok(Template { parts, paths })
    }

    /// The fields the placeholders name.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// The permission with each placeholder filled by `lookup` (`None`: the value is null or
    /// missing); why it cannot be (a value missing, or one a role cannot hold).
    pub fn fill(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
        let mut out = self.parts[0].clone();
        for (path, part) in self.paths.iter().zip(&self.parts[1..]) {
            let Some(v) = lookup(path) else {
                return Err(format!(
                    "the file permission `{}` needs `{path}`, which is null or missing in this row",
                    self.text()
                ));
            };
            if v.is_empty()
                || v.chars().any(|c| {
                    c.is_whitespace() || matches!(c, '"' | '(' | ')' | '{' | '}' | '[' | ']' | ',')
                })
            {
                return Err(format!(
                    "the file permission `{}`: `{path}` holds {v:?}, which no Appwrite role can hold",
                    self.text()
                ));
            }
            out.push_str(&v);
            out.push_str(part);
        }
        Ok(out)
    }

    /// The template as written.
    pub fn text(&self) -> String {
        let mut out = self.parts[0].clone();
        for (path, part) in self.paths.iter().zip(&self.parts[1..]) {
            out.push('{');
            out.push_str(path);
            out.push('}');
            out.push_str(part);
        }
        out
    }
}

/// Checks a file permission template: `action("role")` with an action of [`FILE_ACTIONS`] and
/// placeholders that `is_field` accepts; its placeholders, or why it is refused.
pub fn check_file_permission(
    text: &str,
    is_field: impl Fn(&str) -> bool,
) -> Result<Template, String> {
    let t = Template::parse(text)?;
    let filled = t.fill(|_| Some("x".to_string()))?;
    let Some((action, role)) = filled.split_once('(') else {
        return Err(format!(
            "`{text}` is not a permission: write it as read(\"user:{{ownerId}}\")"
        ));
    };
    if !FILE_ACTIONS.contains(&action) {
        return Err(format!(
            "`{text}`: a file's permission is one of {} (Appwrite takes no create on a file and stores write as update and delete)",
            FILE_ACTIONS.join(", ")
        ));
    }
    let quoted = role
        .strip_suffix(')')
        .and_then(|r| r.strip_prefix('"'))
        .and_then(|r| r.strip_suffix('"'));
    if quoted.is_none_or(|r| r.is_empty() || r.contains('"')) {
        return Err(format!(
            "`{text}` is not a permission: the role goes in double quotes, as in read(\"user:{{ownerId}}\")"
        ));
    }
    if let Some(p) = t.paths().iter().find(|p| !is_field(p)) {
        return Err(format!(
            "`{text}`: `{p}` is not a top-level field path of this mapping"
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_a_missing_value_is_said() {
        let t = check_file_permission("read(\"user:{ownerId}\")", |p| p == "ownerId").unwrap();
        assert_eq!(t.paths(), ["ownerId"]);
        assert_eq!(
            t.fill(|_| Some("u-1".into())).unwrap(),
            "read(\"user:u-1\")"
        );
        let why = t.fill(|_| None).unwrap_err();
        assert!(why.contains("ownerId") && why.contains("null"), "{why}");
        let why = t.fill(|_| Some("a b".into())).unwrap_err();
        assert!(why.contains("no Appwrite role"), "{why}");
        let t = Template::parse("update(\"team:{a}/{b}\")").unwrap();
        assert_eq!(
            t.fill(|p| Some(p.to_uppercase())).unwrap(),
            "update(\"team:A/B\")"
        );
        assert_eq!(t.text(), "update(\"team:{a}/{b}\")");
        assert_eq!(
            Template::parse("read(\"any\")")
                .unwrap()
                .fill(|_| None)
                .unwrap(),
            "read(\"any\")"
        );
    }

    #[test]
    fn bad_templates_are_refused_with_why() {
        let field = |p: &str| p == "ownerId";
        for (bad, says) in [
            ("read(\"user:{ownerId\")", "not closed"),
            ("read(\"user:{}\")", "name a field"),
            ("read(\"user:}\")", "without its"),
            ("create(\"users\")", "no create"),
            ("write(\"users\")", "update and delete"),
            ("read(users)", "double quotes"),
            ("read(\"user:{other}\")", "not a top-level field"),
            ("readers", "not a permission"),
        ] {
            let why = check_file_permission(bad, field).unwrap_err();
            assert!(why.contains(says), "{bad}: {why}");
        }
    }
}
